"""Media segments as the scheduler and block manager see them: byte ranges, no tensors.

A sequence keeps its prompt's `MediaSegment`s for its whole life (preemption included), so a
recompute projects the same rows again. Two pure functions cut them to what one step or one
KV block needs:

- `step_slices`: the feature rows of the tokens a step computes. A prefill chunk may end inside
  an image; the next chunk carries the rest of its rows.
- `block_media_keys`: per KV block, bytes naming the media in it (digest, kind, where the
  segment starts relative to the block, its length). The prefix cache hashes them with the
  block's token ids, so the same placeholders over different media never share a block while
  the same media, at the same place after the same prefix, does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from museserve.engine.plan import MediaSlice
from museserve.errors import Internal, InvalidArgument
from museserve.messages import MediaSegment, PreparedRequest

FEATURE_BYTES = 2  # features are float16


def step_slices(media: Sequence[MediaSegment], first: int, num_new: int) -> tuple[MediaSlice, ...]:
    """The media rows of positions [first, first + num_new), in position order."""
    end = first + num_new
    out = []
    for seg in media:
        lo, hi = max(first, seg.start), min(end, seg.start + seg.num_tokens)
        if lo >= hi:
            continue
        row_bytes = seg.feature_dim * FEATURE_BYTES
        rows = seg.features[(lo - seg.start) * row_bytes : (hi - seg.start) * row_bytes]
        out.append(MediaSlice(seg.kind, lo - first, hi - lo, seg.feature_dim, rows))
    return tuple(out)


def block_media_keys(media: Sequence[MediaSegment], block_size: int) -> dict[int, bytes]:
    """Block index -> the extra bytes its hash takes; blocks with no media are absent."""
    keys: dict[int, bytearray] = {}
    for seg in media:
        first_block = seg.start // block_size
        last_block = (seg.start + seg.num_tokens - 1) // block_size
        for block in range(first_block, last_block + 1):
            key = keys.setdefault(block, bytearray())
            key += seg.kind.encode() + b"\0" + seg.digest.encode() + b"\0"
            key += (seg.start - block * block_size).to_bytes(8, "little", signed=True)
            key += seg.num_tokens.to_bytes(8, "little")
    return {block: bytes(key) for block, key in keys.items()}


def check_segments(media: Sequence[MediaSegment], num_prompt_tokens: int) -> None:
    """Segments lie inside the prompt, in order, without overlap, with whole feature rows."""
    end = 0
    for i, seg in enumerate(media):
        if seg.start < end or seg.num_tokens < 1 or seg.start + seg.num_tokens > num_prompt_tokens:
            raise ValueError(f"media[{i}] at {seg.start}+{seg.num_tokens} overlaps or leaves the prompt")
        if len(seg.features) != seg.num_tokens * seg.feature_dim * FEATURE_BYTES:
            raise ValueError(f"media[{i}] holds {len(seg.features)} bytes, not {seg.num_tokens} float16 rows")
        end = seg.start + seg.num_tokens


def check_request_media(request: PreparedRequest, feature_dims: Mapping[str, int], pool: str) -> None:
    """The preprocess tier refuses media a pool cannot take; this guards against a mismatch
    between the tiers, so a bad request fails alone rather than its whole step."""
    for segment in request.media:
        if feature_dims.get(segment.kind) != segment.feature_dim:
            raise InvalidArgument(
                f"model {pool} takes no {segment.kind} input of {segment.feature_dim} values per token",
                field="messages",
            )
    try:
        check_segments(request.media, request.num_prompt_tokens)
    except ValueError as exc:
        raise Internal(f"malformed prepared request: {exc}") from None
