"""Speculative decoding on the real model through the whole server: the shipped SmolLM2 pool
proposes with n-gram prompt lookup. An answer that quotes its prompt is the one transformers'
greedy `generate` gives, token for token, over both APIs; a request that turns speculation off
gets the same text; the pool's speculation counters reach Prometheus."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from museserve.client import ChatClient, build_request
from museserve.config import MuseServeConfig
from museserve.v1 import chat_pb2 as pb

from .conftest import REAL_POOL, TEST_KEY, exported_counters, key_client
from .test_real_model import reference, reference_text  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.integration

CODE = (
    "def merge(left, right):\n    result = []\n    i = j = 0\n    while i < len(left) and j < len(right):\n"
    "        if left[i] <= right[j]:\n            result.append(left[i])\n            i += 1\n"
    "        else:\n            result.append(right[j])\n            j += 1\n"
    "    return result + left[i:] + right[j:]\n"
)
QUOTING = f"Rewrite this code with type hints added. Reply with the full code only.\n{CODE}"
ANSWER_TOKENS = 96


@pytest.fixture
def real(grpc_address: str) -> Iterator[ChatClient]:
    client = key_client(grpc_address, TEST_KEY)
    yield client
    client.close()


def speculation_counters() -> dict[str, float]:
    return exported_counters("ray_museserve_spec_decode_", REAL_POOL)


def test_a_quoting_answer_equals_transformers_and_speculation_is_counted(real: ChatClient, reference) -> None:  # noqa: F811
    request = build_request(QUOTING, model=REAL_POOL, temperature=0.0, max_output_tokens=ANSWER_TOKENS)
    answer = real.chat(request, timeout=300)
    assert answer.text == reference_text(reference, QUOTING, ANSWER_TOKENS)
    request.sampling.speculative = pb.SPECULATION_OFF
    assert real.chat(request, timeout=300).text == answer.text
    deadline = time.monotonic() + 60  # Ray's agent exports on an interval of seconds
    while True:
        counters = speculation_counters()
        if counters.get("ray_museserve_spec_decode_num_accepted_tokens_total", 0) > 0:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no accepted proposals exported after 60 s: {counters}")
        time.sleep(1)
    assert (
        counters["ray_museserve_spec_decode_num_draft_tokens_total"]
        >= counters["ray_museserve_spec_decode_num_accepted_tokens_total"]
    )
    assert counters["ray_museserve_spec_decode_num_drafts_total"] > 0


def test_the_openai_api_may_turn_speculation_off(app_config: MuseServeConfig) -> None:
    base_url = f"http://127.0.0.1:{app_config.server.http_port}/v1"
    with openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0, timeout=300) as client:
        texts = [
            client.chat.completions.create(
                model=REAL_POOL, messages=[{"role": "user", "content": QUOTING}], temperature=0, max_tokens=48,
                extra_body=extra,
            ).choices[0].message.content
            for extra in ({}, {"speculative": "off"})
        ]  # fmt: skip
        assert texts[0] == texts[1]
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=REAL_POOL, messages=[{"role": "user", "content": "hi"}], extra_body={"speculative": "maybe"}
            )
        assert "speculative" in str(refused.value)
