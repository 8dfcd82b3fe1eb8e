"""The identity of a full KV block: a hash chained over its parent's hash, the sequence's cache
salt (one per tenant), its own token ids and, where it holds media placeholders, the media's
digests and offsets (`media.block_media_keys`). Two blocks share a hash only when the whole
prefix up to and including them is equal for the same tenant. The block manager keys its
prefix cache by these; a router hashing a prompt the same way finds the replica that holds it."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from collections.abc import Sequence as Seq

BlockHash = bytes


def chain_hash(parent: BlockHash, token_ids: Seq[int], extra: bytes = b"") -> BlockHash:
    """`extra`: what else the block's KV depends on (its media); after the fixed-size token bytes."""
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(struct.pack(f"<{len(token_ids)}I", *token_ids))  # 4 bytes each, little-endian
    if extra:
        digest.update(extra)
    return digest.digest()


def cache_salt(tenant: str, adapter: str = "") -> str:
    """A request's prefix-cache namespace: its tenant's, and within it its LoRA adapter's (whose
    KV differs from the base model's for the same tokens)."""
    return f"{tenant}\x1f{adapter}" if adapter else tenant


def root_hash(cache_salt: str) -> BlockHash:
    return hashlib.blake2b(cache_salt.encode("utf-8"), digest_size=16, person=b"museserve-kv").digest()


def extend_chain(
    chain: list[BlockHash],
    token_ids: Seq[int],
    cache_salt: str,
    media_keys: Mapping[int, bytes],
    block_size: int,
    num_full_blocks: int,
) -> list[BlockHash]:
    """Appends to `chain` (the hashes of the first len(chain) blocks) those of the blocks up to
    `num_full_blocks`, and returns the first `num_full_blocks`. `media_keys`: block index ->
    its media bytes (empty for text)."""
    parent = chain[-1] if chain else root_hash(cache_salt)
    for index in range(len(chain), num_full_blocks):
        tokens = token_ids[index * block_size : (index + 1) * block_size]
        parent = chain_hash(parent, tokens, media_keys.get(index, b""))
        chain.append(parent)
    return chain[:num_full_blocks]
