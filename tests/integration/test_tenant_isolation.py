"""The prefix cache never serves one tenant's blocks to another, on the running app.

A block's hash is salted with the tenant, so the same prompt from a second tenant shares
no blocks with the first: its prompt is computed again (no cached tokens), and nothing in
its timing can tell whether another tenant sent that prompt before.
"""

from __future__ import annotations

import uuid

import pytest

from museserve.client import build_request
from tests.integration.conftest import BULK_KEY, TEST_KEY, key_client

pytestmark = pytest.mark.integration


def _cached_tokens(address: str, key: str, prompt: str, user: str) -> tuple[int, int]:
    client = key_client(address, key, user=user)
    try:
        reply = client.chat(build_request(prompt, temperature=0.0, max_output_tokens=1), timeout=60)
    finally:
        client.close()
    return reply.usage.prompt_tokens, reply.usage.cached_tokens


def test_the_same_prompt_from_another_tenant_shares_no_cached_blocks(direct_grpc_address: str) -> None:
    prompt = f"{uuid.uuid4().hex} " + " ".join(f"fact {i} about the harbour" for i in range(120))
    prompt_tokens, cold = _cached_tokens(direct_grpc_address, TEST_KEY, prompt, user="alice")
    assert prompt_tokens > 256 and cold == 0
    _, warm = _cached_tokens(direct_grpc_address, TEST_KEY, prompt, user="bob")  # same tenant, other user
    assert warm >= prompt_tokens // 2, "the prefix cache did not hit within one tenant"
    _, other_tenant = _cached_tokens(direct_grpc_address, BULK_KEY, prompt, user="alice")
    assert other_tenant == 0, "a tenant was served blocks cached for another tenant"
