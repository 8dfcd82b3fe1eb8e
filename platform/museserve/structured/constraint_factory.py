"""Building each request's `OutputConstraint`: which grammars it needs, compiled off the
engine's loop, its budget steering, and the refusal of a budget too small for any answer."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from museserve.domain import ResponseFormatKind, ToolChoiceKind
from museserve.errors import InvalidArgument
from museserve.messages import PreparedRequest
from museserve.preprocess.chat_format import Markers
from museserve.preprocess.tokenizer import Tokenizer
from museserve.structured.constraint import OutputConstraint
from museserve.structured.grammar import GrammarCache
from museserve.structured.steering import Steering, steering_for


def needs_constraint(request: PreparedRequest, markers: Markers) -> bool:
    if request.response_format.kind is not ResponseFormatKind.TEXT:
        return True
    if not request.tools:
        return False
    if markers.tool_call_ids is not None:
        return True
    return request.tool_choice.kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED)


def check_budget(request: PreparedRequest, steering: Steering, markers: Markers) -> None:
    """A budget below the shortest answer the grammar accepts would cut it off: refused up front."""
    calls_only = bool(request.tools) and request.tool_choice.kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED)
    if not calls_only and request.response_format.kind is ResponseFormatKind.TEXT:
        return  # free text may answer instead of a call
    minimum = steering.minimum_tokens()
    if minimum is None:
        return
    what = "a tool call" if calls_only else "a JSON answer of this schema"
    if markers.tool_call_ids is not None and calls_only:
        minimum += 2  # the call's own control tokens
    if request.max_output_tokens < minimum:
        raise InvalidArgument(
            f"{what} needs at least {minimum} output tokens with this model; {request.max_output_tokens} were given",
            field="sampling.max_output_tokens",
        )


class ConstraintFactory:
    """Builds each request's OutputConstraint, compiling its grammars on a thread of its own so
    a compile does not hold up the engine's step loop (xgrammar compiles mostly outside the GIL)."""

    def __init__(self, tokenizer: Tokenizer, markers: Markers, vocab_size: int | None = None):
        self._tokenizer = tokenizer
        self._markers = markers
        self._vocab_size = vocab_size or tokenizer.vocab_size
        self._grammars: GrammarCache | None = None  # built on first use: importing xgrammar takes seconds
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")

    async def build(self, request: PreparedRequest) -> OutputConstraint | None:
        """None when the request needs no constraint; InvalidArgument when a schema cannot be compiled."""
        if not needs_constraint(request, self._markers):
            return None
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.build_now, request)

    def build_now(self, request: PreparedRequest) -> OutputConstraint:
        if self._grammars is None:
            self._grammars = GrammarCache(self._tokenizer, self._markers.stop_ids, self._vocab_size)
        call_grammar = json_grammar = None
        tools = [(i, t) for i, t in enumerate(request.tools)]
        if request.tool_choice.kind is ToolChoiceKind.NAMED:
            tools = [(i, t) for i, t in tools if t.name == request.tool_choice.name]
        where = [f"tools[{i}].parameters_json_schema" for i, _ in tools]
        frame = self._markers.tool_call_text
        if tools and self._markers.tool_call_ids is not None:
            call_grammar = self._grammars.tool_calls([t for _, t in tools], where)
        elif (
            tools and frame is not None and request.tool_choice.kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED)
        ):
            json_grammar = self._grammars.framed_tool_call([t for _, t in tools], where, frame)
        f = request.response_format
        if json_grammar is None and f.kind is not ResponseFormatKind.TEXT:
            schema = f.json_schema if f.kind is ResponseFormatKind.JSON_SCHEMA else None
            json_grammar = self._grammars.json(schema, f.strict)
        steering = steering_for(request, [t for _, t in tools], self._markers, self._tokenizer)
        if steering is not None:
            check_budget(request, steering, self._markers)
        return OutputConstraint(
            request, self._tokenizer, self._markers, call_grammar, json_grammar, self._vocab_size, steering
        )

    @property
    def grammars(self) -> GrammarCache | None:
        return self._grammars

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
