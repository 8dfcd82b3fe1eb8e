"""Growing a live request's prompt: speech arrives as audio tokens while the request runs.

A live request is admitted with the prompt that precedes the speech (`MuseEngine.generate`
with `live=True`). Each `extend` appends tokens (and the media segments over them) and wakes
the engine, which prefills them in the next steps like chunks of one long prompt; the KV of
what came before stays. The extension that closes the prompt carries the turn's tail (end of
the user message, the generation prompt): the step that computes it samples the first token.

Every bound is checked before the sequence changes, so a refused extension leaves the
request as it was: the context window (prompt plus the answer's budget), the replica's KV
capacity, and the media rows (whole float16 rows of a kind the model takes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from museserve.engine.media import check_segments
from museserve.engine.request import Request
from museserve.errors import FailedPrecondition, Internal, InvalidArgument
from museserve.messages import MediaSegment


def extend_prompt(
    request: Request,
    token_ids: Sequence[int],
    media: tuple[MediaSegment, ...],
    *,
    close: bool,
    context_window: int,
    capacity_tokens: int,
    feature_dims: Mapping[str, int],
) -> None:
    seq = request.seq
    if not seq.prompt_open:
        raise FailedPrecondition(f"request {request.request_id} has no open prompt to extend", field="request_id")
    num_prompt = seq.num_prompt_tokens + len(token_ids)
    answer_room = seq.max_num_tokens - seq.num_prompt_tokens  # reasoning and answer budget
    if num_prompt + answer_room > context_window:
        raise InvalidArgument(
            f"the prompt would be {num_prompt} tokens; with the answer's {answer_room} the request needs "
            f"{num_prompt + answer_room}, over model {request.prepared.pool}'s context window of {context_window}",
            field="audio",
        )
    if num_prompt + answer_room > capacity_tokens:
        raise InvalidArgument(
            f"the request would need {num_prompt + answer_room} tokens of KV cache; this replica holds "
            f"{capacity_tokens}",
            field="audio",
        )
    for segment in media:
        if feature_dims.get(segment.kind) != segment.feature_dim:
            raise InvalidArgument(
                f"model {request.prepared.pool} takes no {segment.kind} input of {segment.feature_dim} values "
                "per token",
                field="audio",
            )
    try:
        shifted = tuple(dataclasses.replace(s, start=s.start + seq.num_prompt_tokens) for s in media)
        check_segments((*seq.media, *shifted), num_prompt)
    except ValueError as exc:
        raise Internal(f"malformed live extension: {exc}") from None
    seq.extend_prompt(token_ids, shifted, close=close)
    prepared = dataclasses.replace(
        request.prepared,
        prompt_token_ids=(*request.prepared.prompt_token_ids, *token_ids),
        media=(*request.prepared.media, *shifted),
    )
    request.prepared = prepared
    request.output.request = prepared  # its usage counts the grown prompt
