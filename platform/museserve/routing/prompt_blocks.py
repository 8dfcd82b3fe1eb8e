"""A prepared request's prompt as the engine will key its KV blocks: the same chain hashes,
salted by the tenant (and adapter) and covering media, for the full blocks the prefix cache can serve."""

from __future__ import annotations

from museserve.engine.block_hashes import BlockHash, cache_salt, extend_chain
from museserve.engine.media import block_media_keys
from museserve.messages import PreparedRequest


def prompt_block_hashes(request: PreparedRequest, block_size: int) -> list[BlockHash]:
    """The hashes of the prompt's full blocks, leaving at least one token to compute (as the
    engine's prefix lookup does: the last token's logits start generation)."""
    num_full = (request.num_prompt_tokens - 1) // block_size
    media = block_media_keys(request.media, block_size) if request.media else {}
    return extend_chain(
        [], request.prompt_token_ids, cache_salt(request.tenant, request.adapter), media, block_size, num_full
    )
