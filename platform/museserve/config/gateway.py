"""The gateway's section: identity, rate limits, Redis, admission by tier, mode routing, and
which LoRA adapters each tier and tenant may use."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from museserve.config.base import DeploymentConfig, Section
from museserve.config.lora import ADAPTER_NAME
from museserve.config.voice import VoiceConfig
from museserve.domain import Mode

SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# "POOL:ADAPTER": an adapter of one pool. Pool names hold no ':', so the first ':' splits it;
# that the pool exists is checked against the pools (`config.tree`).
ADAPTER_ENTRY = rf"^[^:\s]+:{ADAPTER_NAME.removeprefix('^').removesuffix('$')}$"
AdapterEntry = Annotated[str, Field(pattern=ADAPTER_ENTRY)]


def split_adapter_entry(entry: str) -> tuple[str, str]:
    """("POOL", "ADAPTER") of a "POOL:ADAPTER" entry."""
    pool, _, adapter = entry.partition(":")
    return pool, adapter


class RequestLimits(Section):
    """Bounds on what a client may send, checked at the gateway before any work starts."""

    max_messages: int = Field(1024, ge=1, description="Messages per request.")
    max_parts_per_message: int = Field(64, ge=1, description="Content parts per message.")
    max_text_bytes: int = Field(4 << 20, ge=1, description="UTF-8 bytes of all text in a request.")
    max_stop_strings: int = Field(8, ge=0, description="Entries in sampling.stop.")
    max_stop_string_chars: int = Field(64, ge=1, description="Characters per stop string.")
    max_tools: int = Field(128, ge=0, description="Tools per request.")
    max_choices: int = Field(
        16, ge=1, le=128, description="Answers per request (n): each holds a batch slot and its own KV blocks."
    )


class RateSpec(Section):
    """Limits of one account scope (a user, or a whole tenant). Unset: unlimited.

    Enforced as GCRA: each limit refills at its per-minute rate and holds at most its
    burst (default: one minute's worth), so a burst can spend at once what a minute refills.
    """

    requests_per_minute: float | None = Field(None, gt=0, description="Sustained requests per minute.")
    request_burst: float | None = Field(None, ge=1, description="Requests admitted at once from full.")
    tokens_per_minute: float | None = Field(None, gt=0, description="Sustained prompt+output tokens per minute.")
    token_burst: float | None = Field(None, ge=1, description="Tokens admitted at once from full.")


class DegradeConfig(Section):
    """How a tier's requests are made cheaper, instead of refused, while a pool is overloaded:
    from the moment the pool's estimated wait for a first token reaches `at` of the wait
    admission allows (the pool's `admission.admit_within` of the tier's TTFT objective). Each
    degraded response says so (`degraded`), and a metric counts them."""

    at: float = Field(
        0.5, gt=0.0, le=1.0, description="Fraction of the wait admission allows at which degradation starts."
    )
    thinking_budget: int | None = Field(
        256, ge=0, description="Most reasoning tokens a degraded Thinking request gets; null: unchanged."
    )
    contemplating_agents: int | None = Field(
        2, ge=2, le=8, description="Most agents a degraded Contemplating request gets; null: unchanged."
    )
    to_instant: bool = Field(
        False, description="Thinking and Contemplating requests are served in Instant mode instead."
    )


class TierConfig(Section):
    """What an account tier gets: its scheduling priority, its TTFT objective, what happens to
    its requests under overload, and the rate limits of each user and of each tenant in it."""

    priority: int = Field(1, ge=0, description="Scheduling priority in the engine (lower runs first).")
    admission_share: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Fraction of a pool's max_in_flight (the hard cap) this tier may fill; the rest is kept "
        "for tiers with a larger share.",
    )
    ttft_objective_s: float | None = Field(
        None,
        gt=0,
        description="Time to first token this tier's requests are admitted for: a request whose estimated queueing "
        "delay exceeds it is refused at once (RESOURCE_EXHAUSTED with a retry delay). null: the pool's "
        "admission.ttft_objective_s.",
    )
    drop_late: bool = Field(
        False,
        description="A queued request whose first token can no longer come within the objective (plus its own "
        "prefill) is ended (RESOURCE_EXHAUSTED) before any prefill is spent on it; false: only its deadline ends "
        "it. For fast steps (a GPU): on a CPU one slow step can outlast the objective without any overload.",
    )
    degrade: DegradeConfig | None = Field(
        None, description="Make requests cheaper under overload instead of refusing them; null: never degrade."
    )
    user: RateSpec = RateSpec()
    tenant: RateSpec = RateSpec()
    adapters: tuple[AdapterEntry, ...] | None = Field(
        None,
        description="The LoRA adapters this tier's callers may use, each as POOL:ADAPTER; a request naming "
        "another is refused with PERMISSION_DENIED. null: any adapter of any pool; empty: none (default_adapter "
        "still applies).",
    )
    default_adapter: AdapterEntry | None = Field(
        None,
        description="The adapter, as POOL:ADAPTER, applied to this tier's requests served by POOL that name no "
        "adapter; the callers may use it whatever `adapters` says. null: such requests get the base model.",
    )


class TenantConfig(Section):
    """One tenant's own settings, over those of its tier (each field left null keeps the tier's)."""

    adapters: tuple[AdapterEntry, ...] | None = Field(
        None,
        description="The LoRA adapters this tenant may use, each as POOL:ADAPTER, instead of its tier's "
        "`adapters`; empty: none (default_adapter still applies). null: the tier's.",
    )
    default_adapter: AdapterEntry | None = Field(
        None,
        description="The adapter, as POOL:ADAPTER, applied to this tenant's requests served by POOL that name no "
        "adapter, instead of its tier's default_adapter; the tenant may use it whatever `adapters` says. null: "
        "the tier's.",
    )


class ApiKey(Section):
    """An API key, stored only as the SHA-256 of the key (hex)."""

    sha256: str = Field(..., description="Lowercase hex SHA-256 of the key.")
    tenant: str = Field(..., min_length=1, max_length=128, description="Account the key belongs to.")
    tier: str = Field("default", description="Account tier (a key of gateway.tiers).")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not SHA256_HEX.fullmatch(value):
            raise ValueError("must be the 64-character lowercase hex SHA-256 of the key, not the key")
        return value


class RedisConfig(Section):
    url: str | None = Field(
        None,
        description="redis:// or rediss:// URL of one server, or redis+cluster:// (rediss+cluster://) with one or "
        "more comma-separated startup nodes of a Redis Cluster (host:port,host:port); none: state lives in each "
        "gateway replica.",
    )
    timeout_ms: float = Field(50.0, gt=0, description="Bound on one Redis call, connecting included.")
    max_connections: int = Field(64, ge=1, description="Connections per gateway replica; callers wait for a free one.")
    key_prefix: str = Field("museserve", pattern=r"^[A-Za-z0-9._-]{1,32}$", description="Prefix of every key.")
    on_unavailable: Literal["fail_open", "fail_closed"] = Field(
        "fail_open",
        description="When Redis cannot answer: fail_open decides with this replica's own limiter; fail_closed "
        "refuses with UNAVAILABLE.",
    )
    api_key_cache_s: float = Field(60.0, ge=0, description="How long a key looked up in Redis is trusted.")
    mirror_stream_maxlen: int = Field(100_000, ge=1, description="Approximate cap on each mirror record stream.")
    mirror_streams: int = Field(
        1,
        ge=1,
        le=64,
        description="Mirror record streams ({key_prefix}:mirror:{g<k>}, k < this), a record's chosen by its request "
        "id: on a cluster they spread over slots, so no single stream carries every record.",
    )


class ConversationsConfig(Section):
    """Stored answers that a follow-up continues (`previous_response_id`; the Responses API's
    `store`). With `gateway.redis.url` they live in Redis, so any gateway replica, also after a
    restart, continues any conversation; without it, in each replica's memory."""

    ttl_s: float = Field(30 * 24 * 3600.0, gt=0, description="How long a stored answer can be continued or read.")
    max_bytes: int = Field(
        32 << 20,
        ge=1024,
        description="Largest stored conversation (its messages, media included, as stored); a request whose "
        "conversation is larger is refused before any work (INVALID_ARGUMENT on store).",
    )
    timeout_s: float = Field(2.0, gt=0, description="Bound on one read or write of a stored answer.")
    max_in_memory: int = Field(10_000, ge=1, description="Without Redis: answers kept per replica, oldest dropped.")


class GatewayConfig(Section):
    deployment: DeploymentConfig = DeploymentConfig(max_ongoing_requests=1024)
    auth: Literal["none", "api_key"] = Field(
        "none", description="none: every caller is tenant 'anonymous' (local only); api_key: a key is required."
    )
    api_keys: tuple[ApiKey, ...] = Field((), description="Keys known from config (more may live in Redis).")
    redis: RedisConfig = RedisConfig()
    default_model: str | None = Field(None, description="Pool used when a request names none; first pool if unset.")
    routes: dict[Mode, str] = Field(
        {}, description="Pool per mode for requests that name no model; modes not listed use default_model."
    )
    disabled_modes: tuple[Mode, ...] = Field((), description="Modes refused with FAILED_PRECONDITION.")
    limits: RequestLimits = RequestLimits()
    conversations: ConversationsConfig = ConversationsConfig()
    voice: VoiceConfig = VoiceConfig()
    tiers: dict[str, TierConfig] = Field({"default": TierConfig()}, description="Account tiers by name.")
    tenants: dict[Annotated[str, Field(min_length=1, max_length=128)], TenantConfig] = Field(
        {}, description="Settings of single tenants, by tenant name, over those of their tier."
    )
    inline_text_preprocess: bool = Field(
        True,
        description="Tokenize text-only requests in the gateway replica instead of a hop to the preprocess tier "
        "(media always goes there).",
    )
    mirror_log: str = Field(
        "/tmp/museserve/mirror-records.jsonl",
        pattern=r"^/",
        description="Absolute path of the JSONL file that mirror records go to when there is no Redis.",
    )

    @model_validator(mode="after")
    def _keys_name_tiers(self) -> GatewayConfig:
        if "default" not in self.tiers:
            raise ValueError("tiers must define 'default' (callers with no key, and keys that name no tier)")
        for i, key in enumerate(self.api_keys):
            if key.tier not in self.tiers:
                raise ValueError(f"api_keys[{i}].tier {key.tier!r} is not a tier ({', '.join(sorted(self.tiers))})")
        if self.auth == "api_key" and not self.api_keys and self.redis.url is None:
            raise ValueError("auth api_key needs api_keys or a redis.url to look keys up in")
        return self

    def tier(self, name: str) -> TierConfig:
        """The tier's settings; an unknown tier (a stale key in Redis) gets the default's."""
        return self.tiers.get(name) or self.tiers["default"]

    def priority_of(self, tier: str) -> int:
        return self.tier(tier).priority
