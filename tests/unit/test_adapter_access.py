"""Which LoRA adapter a request runs with: allow-lists and defaults of tiers and tenants, the
refusals (each naming the adapter), the A/B side and mirror sampling of a request with an
adapter, and the config checks of POOL:ADAPTER entries. Pure logic over real adapter stores
(directories in tmp_path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from museserve.config import ConfigError, MuseServeConfig, parse_config
from museserve.domain import ChatRequest, Identity, Message, Role, TextPart
from museserve.errors import InvalidArgument, NotFound, PermissionDenied
from museserve.gateway.adapters import AdapterAccess, CallerAdapters
from museserve.gateway.routing import Router, unit_hash


def adapter_store(root: Path, *names: str) -> str:
    """A store directory holding one adapter per name (a subdirectory with adapter_config.json)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text("{}")
    return str(root)


def make_config(tmp_path: Path, *, ab_share: float = 0.0, mirror_fraction: float = 0.0) -> MuseServeConfig:
    main: dict[str, Any] = {
        "name": "main",
        "modes": ["instant"],  # as the checkpoint would say (the gateway reads it at start)
        "lora": {
            "directory": adapter_store(tmp_path / "main", "support", "acme", "globex"),
            "adapters": [{"name": "listed", "path": str(tmp_path / "elsewhere" / "listed")}],
        },
    }
    if ab_share:
        main["ab"] = {"candidate": "next", "share": ab_share}
    if mirror_fraction:
        main["mirror"] = {"candidate": "shadow", "fraction": mirror_fraction}
    return parse_config(
        {
            "pools": [
                main,
                {
                    "name": "next",
                    "modes": ["instant"],
                    "lora": {"directory": adapter_store(tmp_path / "next", "support", "acme")},
                },
                {
                    "name": "shadow",
                    "modes": ["instant"],
                    "lora": {"directory": adapter_store(tmp_path / "shadow", "support")},
                },
                {"name": "plain", "modes": ["instant"]},
            ],
            "gateway": {
                "tiers": {
                    "default": {},
                    "basic": {"adapters": []},
                    "pro": {"adapters": ["main:support", "next:support"], "default_adapter": "main:support"},
                },
                "tenants": {
                    "acme": {"adapters": ["main:acme", "next:acme"], "default_adapter": "main:acme"},
                    "globex": {"default_adapter": "main:globex"},
                    "umbrella": {"adapters": ["main:acme"]},
                },
            },
        }
    )


def chat(adapter: str = "", tenant: str = "anonymous", tier: str = "default", user: str = "u") -> ChatRequest:
    return ChatRequest(
        request_id="r1",
        messages=(Message(Role.USER, (TextPart("hi"),)),),
        model="main",
        adapter=adapter,
        identity=Identity(tenant=tenant, user=user, tier=tier),
    )


@pytest.fixture
def config(tmp_path: Path) -> MuseServeConfig:
    return make_config(tmp_path)


@pytest.fixture
def access(config: MuseServeConfig) -> AdapterAccess:
    return AdapterAccess(config)


def test_a_tenant_overrides_each_field_of_its_tier_that_it_sets(access: AdapterAccess) -> None:
    assert access.caller(Identity("acme", tier="pro")) == CallerAdapters(
        frozenset({"main:acme", "next:acme"}), "main:acme"
    )
    pro = frozenset({"main:support", "next:support"})
    assert access.caller(Identity("globex", tier="pro")) == CallerAdapters(pro, "main:globex")  # the tier's list
    assert access.caller(Identity("initech", tier="pro")) == CallerAdapters(pro, "main:support")
    assert access.caller(Identity("initech")) == CallerAdapters(None, None)
    assert access.caller(Identity("initech", tier="stale")).allowed is None  # an unknown tier is the default's


def test_a_named_adapter_runs_where_the_caller_may_use_it(access: AdapterAccess) -> None:
    assert access.resolve(chat("support"), "main") == "support"  # default tier: any adapter of any pool
    assert access.resolve(chat("support", tenant="x", tier="pro"), "main") == "support"
    assert access.resolve(chat("listed"), "main") == "listed"  # listed in config, not in the store


def test_no_adapter_means_the_callers_default_on_that_pool_else_the_base_model(access: AdapterAccess) -> None:
    assert access.resolve(chat(tenant="acme", tier="pro"), "main") == "acme"
    assert access.resolve(chat(tenant="x", tier="pro"), "main") == "support"
    assert access.resolve(chat(tenant="acme", tier="pro"), "next") == ""  # its default is main's
    assert access.resolve(chat(), "main") == ""


def test_an_adapter_outside_the_allow_list_is_permission_denied_naming_it(access: AdapterAccess) -> None:
    with pytest.raises(PermissionDenied) as refused:
        access.resolve(chat("support", tenant="acme", tier="pro"), "main")
    assert refused.value.field == "adapter"
    assert "'support'" in refused.value.message and "'acme'" in refused.value.message
    with pytest.raises(PermissionDenied):
        access.resolve(chat("support", tier="basic"), "main")  # an empty list: none
    with pytest.raises(PermissionDenied):
        access.resolve(chat("support", tenant="x", tier="pro"), "shadow")  # allowed on main and next only


def test_an_absent_adapter_outside_the_allow_list_reads_as_denied_not_absent(access: AdapterAccess) -> None:
    with pytest.raises(PermissionDenied) as refused:
        access.resolve(chat("nosuch", tenant="acme", tier="pro"), "main")
    assert "'nosuch'" in refused.value.message


def test_an_adapter_the_pool_lacks_is_not_found_naming_it_and_the_model(access: AdapterAccess) -> None:
    with pytest.raises(NotFound) as refused:
        access.resolve(chat("nosuch"), "main")
    assert refused.value.field == "adapter"
    assert refused.value.message == "model 'main' has no adapter 'nosuch'"
    with pytest.raises(NotFound, match="model 'plain' has no adapter 'support'"):
        access.resolve(chat("support"), "plain")  # a pool without adapters


def test_a_default_the_pool_lacks_is_not_found_and_says_whose_default(tmp_path: Path, access: AdapterAccess) -> None:
    (tmp_path / "main" / "globex" / "adapter_config.json").unlink()  # removed from the store after start
    with pytest.raises(NotFound) as refused:
        access.resolve(chat(tenant="globex", tier="pro"), "main")
    assert "no adapter 'globex'" in refused.value.message and "default adapter of tenant 'globex'" in str(refused.value)


def test_the_default_is_usable_whatever_the_allow_list(config: MuseServeConfig) -> None:
    caller = CallerAdapters(frozenset(), "main:acme")
    assert caller.may_use("main", "acme") and not caller.may_use("next", "acme") and not caller.may_use("main", "x")
    assert AdapterAccess(config).resolve(chat("globex", tenant="globex", tier="pro"), "main") == "globex"


@pytest.mark.parametrize("name", ["../main/support", "has space", "-lead", "x" * 65, "a:b"])
def test_a_name_that_cannot_be_an_adapter_is_invalid(access: AdapterAccess, name: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        access.resolve(chat(name), "main")
    assert refused.value.field == "adapter" and "is not an adapter name" in refused.value.message


def test_usable_adapters_are_those_the_pool_has_and_the_caller_may_use(tmp_path: Path, access: AdapterAccess) -> None:
    assert access.usable("main", Identity()) == ("acme", "globex", "listed", "support")
    assert access.usable("main", Identity("acme", tier="pro")) == ("acme",)
    assert access.usable("next", Identity("acme", tier="pro")) == ("acme",)
    assert access.usable("main", Identity("globex", tier="pro")) == ("globex", "support")  # its default included
    assert access.usable("main", Identity("x", tier="basic")) == ()
    assert access.usable("plain", Identity()) == ()
    adapter_store(tmp_path / "main", "added-later")
    assert "added-later" in access.usable("main", Identity())  # the store is read when asked


def users_on_the_candidate(n: int, share: float = 0.5, tenant: str = "anonymous") -> list[str]:
    users = (f"user-{i}" for i in range(10_000))
    return [u for u in users if unit_hash("ab", "main", tenant, u) < share][:n]


def test_a_request_with_an_adapter_takes_the_ab_candidate_only_where_it_has_it(tmp_path: Path) -> None:
    router = Router(make_config(tmp_path, ab_share=0.5))
    for user in users_on_the_candidate(5):
        assert router.route(chat(user=user)).pool.name == "next"  # no adapter: the split as before
        both = router.route(chat("support", user=user))
        assert (both.pool.name, both.adapter) == ("next", "support")
        assert router.route(chat("globex", user=user)).pool.name == "main"  # next lacks it


def test_the_ab_candidate_must_also_let_the_caller_use_the_adapter(tmp_path: Path) -> None:
    router = Router(make_config(tmp_path, ab_share=0.5))
    for user in users_on_the_candidate(5, tenant="umbrella"):
        # next has acme too, but umbrella may use main's only.
        route = router.route(chat("acme", tenant="umbrella", user=user))
        assert (route.pool.name, route.adapter) == ("main", "acme")
    for user in users_on_the_candidate(5, tenant="globex"):
        # A default adapter follows the same rule: globex's (main:globex) is not on next.
        route = router.route(chat(tenant="globex", tier="pro", user=user))
        assert (route.pool.name, route.adapter) == ("main", "globex")
        assert router.route(chat("support", tenant="globex", tier="pro", user=user)).pool.name == "next"


def test_refusals_do_not_depend_on_the_ab_side(tmp_path: Path) -> None:
    router = Router(make_config(tmp_path, ab_share=1.0))
    with pytest.raises(NotFound, match="model 'main' has no adapter 'nosuch'"):
        router.route(chat("nosuch"))


def test_mirroring_skips_a_request_whose_adapter_the_candidate_lacks(tmp_path: Path) -> None:
    router = Router(make_config(tmp_path, mirror_fraction=1.0))
    assert router.route(chat()).mirror is not None
    mirrored = router.route(chat("support"))
    assert mirrored.mirror is not None and mirrored.adapter == "support"  # the copy runs with it too
    assert router.route(chat("acme")).mirror is None  # shadow has no acme
    assert router.route(chat(tenant="acme", tier="pro")).mirror is None  # nor acme's default


def test_mirroring_skips_an_adapter_the_caller_may_not_use_on_the_candidate(tmp_path: Path) -> None:
    config = make_config(tmp_path, mirror_fraction=1.0)
    # tier pro may use support on main and next only: shadow's support is not this caller's to run.
    route = Router(config).route(chat("support", tenant="x", tier="pro"))
    assert route.adapter == "support" and route.mirror is None


def config_with(tmp_path: Path, **gateway: Any) -> MuseServeConfig:
    pools = [
        {"name": "main", "lora": {"adapters": [{"name": "support", "path": str(tmp_path / "support")}]}},
        {"name": "stored", "lora": {"directory": str(tmp_path / "store")}},  # read later: may not exist yet
        {"name": "plain"},
    ]
    return parse_config({"pools": pools, "gateway": gateway})


def test_entries_naming_a_pool_that_serves_them_are_accepted(tmp_path: Path) -> None:
    tiers = {"default": {"adapters": ["main:support", "stored:anything"], "default_adapter": "stored:later"}}
    config = config_with(tmp_path, tiers=tiers, tenants={"acme": {"default_adapter": "main:support"}})
    assert config.gateway.tenants["acme"].default_adapter == "main:support"
    assert config.gateway.tiers["default"].adapters == ("main:support", "stored:anything")


@pytest.mark.parametrize(
    ("gateway", "problem"),
    [
        ({"tiers": {"default": {"adapters": ["gone:support"]}}},
         "gateway.tiers.default.adapters[0] 'gone:support': 'gone' is not a pool (main, stored, plain)"),
        ({"tiers": {"default": {}}, "tenants": {"acme": {"default_adapter": "plain:support"}}},
         "gateway.tenants.acme.default_adapter 'plain:support': pool 'plain' serves no adapters"),
        ({"tiers": {"default": {}, "pro": {"default_adapter": "main:other"}}},
         "gateway.tiers.pro.default_adapter 'main:other': pool 'main' has no adapter 'other' (listed: support)"),
        ({"tenants": {"acme": {"adapters": ["main"]}}}, "gateway.tenants.acme.adapters[0]: String should match"),
        ({"tiers": {"default": {"default_adapter": "main:../x"}}}, "gateway.tiers.default.default_adapter: String"),
        ({"tenants": {"": {}}}, "gateway.tenants"),
    ],
)  # fmt: skip
def test_entries_that_cannot_be_served_fail_at_load_naming_the_key(
    tmp_path: Path, gateway: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        config_with(tmp_path, **gateway)
    assert problem in str(error.value)
