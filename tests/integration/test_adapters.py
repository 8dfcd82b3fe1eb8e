"""LoRA adapters through the whole server, on the real pool (SmolLM2) with a store of two
PEFT-format adapters: an adapter's greedy answer is what transformers gives with the adapter
merged in by `peft`, over gRPC (`adapter`) and the OpenAI API (`model: "base:adapter"`); the
listings show each caller the adapters it may use; a tenant kept off an adapter is refused with
PERMISSION_DENIED and an unknown adapter with NOT_FOUND, both naming it; loads reach Prometheus."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import openai
import pytest
import torch

from museserve.client import ChatClient, build_request
from museserve.config import MuseServeConfig
from museserve.domain import Message, Role, TextPart
from tests.lora_support import merged
from tests.real_model import SMOLLM2_IM_END_ID

from .conftest import (
    ADAPTERS,
    PROBE_KEY,
    REAL_POOL,
    ROUTED_ADAPTER,
    ROUTED_POOL,
    ROUTING_PERIOD_S,
    TEST_KEY,
    exported_counters,
    key_client,
)
from .test_real_model import reference  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.integration

QUESTION = "Suggest a name for a small bakery."
ANSWER_TOKENS = 24


def store(app_config: MuseServeConfig) -> Path:
    directory = app_config.pool(REAL_POOL).lora.directory
    assert directory is not None
    return Path(directory)


def merged_answer(reference, adapter_dir: Path) -> str:  # noqa: F811
    chat_format, hf = reference
    model = merged(hf, adapter_dir)
    prompt = chat_format.render([Message(Role.USER, (TextPart(QUESTION),))], (), reasoning=False)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=ANSWER_TOKENS, do_sample=False,
            eos_token_id=SMOLLM2_IM_END_ID, pad_token_id=SMOLLM2_IM_END_ID,
        )[0, len(prompt) :].tolist()  # fmt: skip
    return chat_format.tokenizer.decode(out)


def ask(client: ChatClient, adapter: str):
    request = build_request(QUESTION, model=REAL_POOL, adapter=adapter, temperature=0.0,
                            max_output_tokens=ANSWER_TOKENS)  # fmt: skip
    return client.chat(request, timeout=120)


def test_an_adapters_answer_is_the_merged_models_over_both_apis(
    grpc_address: str,
    app_config: MuseServeConfig,
    reference,  # noqa: F811
) -> None:
    client = key_client(grpc_address, TEST_KEY)
    try:
        answers = {name: ask(client, name).text for name in ("", *ADAPTERS)}
    finally:
        client.close()
    # One adapter held to the reference here (tests/unit/test_lora_real_model.py holds three, in one batch).
    assert answers[ADAPTERS[0]] == merged_answer(reference, store(app_config) / ADAPTERS[0])
    assert len(set(answers.values())) == 3
    base_url = f"http://127.0.0.1:{app_config.server.http_port}/v1"
    with openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0, timeout=120) as oai:
        completion = oai.chat.completions.create(
            model=f"{REAL_POOL}:{ADAPTERS[0]}", messages=[{"role": "user", "content": QUESTION}], temperature=0,
            max_tokens=ANSWER_TOKENS,
        )  # fmt: skip
    assert completion.choices[0].message.content == answers[ADAPTERS[0]]
    assert completion.model == f"{REAL_POOL}:{ADAPTERS[0]}"


def test_listings_show_each_caller_its_adapters(grpc_address: str, app_config: MuseServeConfig) -> None:
    for key, expected in ((TEST_KEY, sorted(ADAPTERS)), (PROBE_KEY, [])):
        client = key_client(grpc_address, key, user="lister")
        try:
            models = {m.name: list(m.adapters) for m in client.list_models(timeout=30).models}
        finally:
            client.close()
        assert models[REAL_POOL] == expected
    base_url = f"http://127.0.0.1:{app_config.server.http_port}/v1"
    with openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0, timeout=30) as oai:
        ids = [model.id for model in oai.models.list()]
    assert {f"{REAL_POOL}:{name}" for name in ADAPTERS} <= set(ids)


def test_refusals_name_the_adapter(grpc_address: str) -> None:
    probe = key_client(grpc_address, PROBE_KEY, user="refused")
    tester = key_client(grpc_address, TEST_KEY)
    try:
        with pytest.raises(grpc.RpcError) as denied:
            ask(probe, ADAPTERS[0])
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert ADAPTERS[0] in denied.value.details()
        with pytest.raises(grpc.RpcError) as unknown:
            ask(tester, "no-such-adapter")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-adapter" in unknown.value.details()
    finally:
        probe.close()
        tester.close()


def lora_counters(pool: str = REAL_POOL) -> dict[str, float]:
    return exported_counters("ray_museserve_lora_", pool)


def test_adapter_loads_and_tokens_reach_prometheus(grpc_address: str) -> None:
    client = key_client(grpc_address, TEST_KEY)
    try:
        ask(client, ADAPTERS[1])
    finally:
        client.close()
    deadline = time.monotonic() + 60  # Ray's agent exports on an interval of seconds
    while (counters := lora_counters()).get("ray_museserve_lora_generation_tokens_total", 0) <= 0:
        if time.monotonic() > deadline:
            pytest.fail(f"no adapter tokens exported after 60 s: {counters}")
        time.sleep(1)
    assert counters["ray_museserve_lora_loads_total"] >= 1
    assert counters["ray_museserve_lora_prompt_tokens_total"] > 0


def test_requests_for_an_adapter_go_to_the_replica_that_holds_it(grpc_address: str) -> None:
    """The routed pool's replicas (three) report their resident adapters; a request whose prompt
    no replica holds goes where its adapter is, so only the first of these loads it."""
    client = key_client(grpc_address, TEST_KEY)

    def ask_routed(i: int) -> None:
        request = build_request(f"{i} {'ab' * (i + 1)}", model=ROUTED_POOL, adapter=ROUTED_ADAPTER,
                                temperature=0.0, max_output_tokens=4)  # fmt: skip
        client.chat(request, timeout=60)

    try:
        ask_routed(0)  # loads the adapter on one replica
        time.sleep(4 * ROUTING_PERIOD_S + 1.0)  # its report reaches the routers (as test_prefix_routing waits)
        for i in range(1, 7):
            ask_routed(i)
    finally:
        client.close()
    deadline = time.monotonic() + 60
    while (counters := lora_counters(ROUTED_POOL)).get("ray_museserve_lora_generation_tokens_total", 0) < 7:
        if time.monotonic() > deadline:
            pytest.fail(f"the routed pool's adapter tokens were not exported after 60 s: {counters}")
        time.sleep(1)
    assert counters["ray_museserve_lora_loads_total"] == 1, counters
