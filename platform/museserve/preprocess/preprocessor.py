"""Turns a validated `ChatRequest` into a `PreparedRequest` for one pool.

Everything that needs the pool's chat format is decided here, before a model pool sees the
request and before the gateway charges its rate limits: the prompt's token count against the
pool's context window (`PoolModel.window`: the smallest of context_length, the checkpoint's
positions and what its KV cache holds), the output budget that still fits, the reasoning
budget of the mode, the sampling defaults of the checkpoint, and for Contemplating every
pass's prompt. Images and audio become feature rows and placeholder runs here too (`media`);
their tokens count like any other prompt token.

`fetch_media` (async, image URLs) runs on the event loop; `count` and `prepare` are CPU work
for a worker thread and take what it fetched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from museserve.config import MediaLimits, MuseServeConfig, PoolConfig
from museserve.config.context_window import ContextWindow
from museserve.domain import ChatRequest, Mode, RawPrompt, SamplingParams, ToolChoiceKind, ToolSpec
from museserve.errors import FailedPrecondition, Internal, InvalidArgument
from museserve.messages import ContemplationPrompts, MediaSegment, PreparedRequest, PromptCount
from museserve.preprocess.chat_format import MediaTokens
from museserve.preprocess.contemplating_prompts import check_contemplating_fits, contemplation_prompts
from museserve.preprocess.media import EncodedMedia, Fetched, MediaEncoder, media_segments, placeholders
from museserve.preprocess.pool_model import PoolModel, pool_model
from museserve.preprocess.url_fetch import ImageFetcher

# What a request that leaves a sampling field unset gets when the checkpoint sets no default.
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


class Preprocessor:
    @classmethod
    def for_pools(cls, config: MuseServeConfig) -> dict[str, Preprocessor]:
        """One per pool of `config`; pools of one checkpoint share its chat format (`pool_model` caches it)."""
        media = config.preprocess.media
        return {
            pool.name: cls(
                pool_model(pool, media, config.preprocess.tokenizer),
                media,
                config.server.request_timeout_s,
                config.gateway.priority_of,
            )
            for pool in config.pools
        }

    def __init__(
        self,
        model: PoolModel,
        media: MediaLimits,
        request_timeout_s: float,
        priority_of: Callable[[str], int] = lambda tier: 0,
        *,
        fetcher: ImageFetcher | None = None,
    ):
        self.model = model
        self.chat_format = model.chat_format
        self.tokenizer = model.chat_format.tokenizer
        self._media = MediaEncoder(media, model.media_kinds, fetcher)
        self._request_timeout_s = request_timeout_s
        self._priority_of = priority_of  # account tier -> scheduling priority

    async def fetch_media(self, request: ChatRequest, pool: PoolConfig) -> Fetched:
        """The request's image URLs, fetched concurrently (when the service allows URLs)."""
        return await self._media.fetch(request, pool.name)

    def count(self, request: ChatRequest, pool: PoolConfig, fetched: Fetched | None = None) -> PromptCount:
        """The prompt's size, also when it exceeds the context window (so a client can trim)."""
        media = self._encode(request, pool, fetched)
        ids = self._render(request, self._requested_budget(request, pool) > 0, media)
        return PromptCount(len(ids), self.model.window(pool).tokens, pool.name)

    def prepare(self, request: ChatRequest, pool: PoolConfig, fetched: Fetched | None = None) -> PreparedRequest:
        """Positions used: prompt + reasoning (budget + its closing marker) + output <= the window."""
        media = self._encode(request, pool, fetched)
        segments = lambda ids: media_segments(ids, media, self.chat_format.markers.media_ids)  # noqa: E731
        return self._prepared(request, pool, lambda reasoning: self._render(request, reasoning, media), segments, media)

    def prepare_live(
        self, request: ChatRequest, pool: PoolConfig, history: Sequence[Sequence[MediaSegment]] = ()
    ) -> LivePrompt:
        """A voice turn's prompt, split around the speech still to come. `request.messages` hold
        text, and audio parts only for speech: each earlier one is that turn's speech, whose rows
        are in `history` (per part, segments with starts relative to the part), and the last
        message is the user turn whose speech is coming (one audio part, data still empty).
        The prompt is rendered with one placeholder for the coming speech; the turn's whole
        prompt is then `prepared.prompt_token_ids + speech tokens + tail_ids`, as a clip of that
        speech gives. The answer's budget is fixed now; the speech may take what is left."""
        placeholder = self.chat_format.markers.media_ids.get("audio")
        if placeholder is None or "audio" not in self.model.media_kinds:
            raise FailedPrecondition(f"model {pool.name} takes no audio input", field="model")
        sizes = [sum(s.num_tokens for s in segments) for segments in history]

        def render(reasoning: bool) -> list[int]:
            parts = iter([*sizes, 1])
            tokens = lambda _: [placeholder] * next(parts)  # noqa: E731
            return self.chat_format.render(
                request.messages, offered_tools(request), reasoning=reasoning, media_tokens=tokens
            )

        def segments(ids: list[int]) -> tuple[MediaSegment, ...]:
            return _speech_in_place(ids, placeholder, history)

        prepared = self._prepared(request, pool, render, segments, [])
        ids = prepared.prompt_token_ids
        at = len(ids) - 1 - ids[::-1].index(placeholder)  # the coming speech: the last placeholder
        reasoning = _reasoning_positions(prepared.thinking_budget)
        return LivePrompt(
            replace(prepared, prompt_token_ids=ids[:at]),
            ids[at + 1 :],
            placeholder,
            max_audio_tokens=self.model.window(pool).tokens - (len(ids) - 1) - reasoning - prepared.max_output_tokens,
        )

    def _prepared(
        self,
        request: ChatRequest,
        pool: PoolConfig,
        render: Callable[[bool], list[int]],
        segments: Callable[[list[int]], tuple[MediaSegment, ...]],
        media: list[EncodedMedia],
    ) -> PreparedRequest:
        window = self.model.window(pool)
        budget = self._requested_budget(request, pool)
        ids = render(budget > 0)
        room = _room_after_prompt(ids, window, "prompt" if request.prompt is not None else "messages")
        requested = request.sampling.max_output_tokens
        if requested is not None:
            if _reasoning_positions(budget) + requested > room:
                reasoning = f" plus reasoning budget {budget}" if budget else ""
                raise InvalidArgument(
                    f"prompt of {len(ids)} tokens{reasoning} plus max_output_tokens {requested} exceeds the "
                    f"context window of {window.tokens} tokens of model {pool.name} {window.limit}",
                    field="sampling.max_output_tokens",
                )
            max_output = requested
        else:
            if budget > 0 and budget + 2 > room:  # the budget must leave its marker and one answer token
                budget = room - 2
                if budget <= 0:
                    budget = 0
                    ids = render(False)  # closes the segment
                    room = _room_after_prompt(ids, window)
            max_output = min(pool.engine.default_max_output_tokens, room - _reasoning_positions(budget))
        num_agents, contemplation = 0, None
        if request.mode.mode is Mode.CONTEMPLATING:
            num_agents = request.mode.num_agents or pool.contemplating.default_agents
            contemplation = self._contemplation(request, pool, num_agents, budget, media)
            check_contemplating_fits(contemplation, budget, max_output, pool, window)
        self._check_stop_token_ids(request.sampling.stop_token_ids)
        return PreparedRequest(
            request_id=request.request_id,
            tenant=request.identity.tenant,
            pool=pool.name,
            prompt_token_ids=tuple(ids),
            mode=request.mode.mode,
            thinking_budget=budget,
            sampling=replace(self._sampling(request.sampling), max_output_tokens=max_output),
            deadline_unix_s=min(time.time() + self._request_timeout_s, request.deadline_unix_s or math.inf),
            priority=self._priority_of(request.identity.tier),
            media=segments(ids),
            tools=offered_tools(request),
            tool_choice=request.tool_choice,
            response_format=request.response_format,
            num_agents=num_agents,
            contemplation=contemplation,
            adapter=request.adapter,  # resolved by the gateway: the caller's default filled in, access checked
        )

    def _sampling(self, s: SamplingParams) -> SamplingParams:
        """Unset fields from the checkpoint's defaults, else `SAMPLING_DEFAULTS`."""
        defaults = {**SAMPLING_DEFAULTS, **self.model.sampling_defaults}
        return replace(s, **{name: defaults[name] for name in SAMPLING_DEFAULTS if getattr(s, name) is None})

    def _check_stop_token_ids(self, token_ids: tuple[int, ...]) -> None:
        for i, token_id in enumerate(token_ids):
            if token_id >= self.tokenizer.vocab_size:
                raise InvalidArgument(
                    f"{token_id} is not a token of this model (vocabulary of {self.tokenizer.vocab_size})",
                    field=f"sampling.stop_token_ids[{i}]",
                )

    def _raw_prompt(self, prompt: RawPrompt) -> list[int]:
        if prompt.text is not None:
            return self.tokenizer.encode_prompt(prompt.text)
        ids = list(prompt.token_ids or ())
        vocab = self.tokenizer.vocab_size
        for i, token_id in enumerate(ids):
            if token_id >= vocab:
                raise InvalidArgument(
                    f"{token_id} is not a token of this model (vocabulary of {vocab})", field=f"prompt[{i}]"
                )
        return ids

    def _encode(self, request: ChatRequest, pool: PoolConfig, fetched: Fetched | None) -> list[EncodedMedia]:
        return self._media.encode(request, pool.name, fetched)

    def _media_tokens(self, media: list[EncodedMedia]) -> MediaTokens | None:
        return placeholders(media, self.chat_format.markers.media_ids) if media else None

    def _render(self, request: ChatRequest, reasoning: bool, media: list[EncodedMedia]) -> list[int]:
        if request.prompt is not None:
            return self._raw_prompt(request.prompt)
        return self.chat_format.render(
            request.messages, offered_tools(request), reasoning=reasoning, media_tokens=self._media_tokens(media)
        )

    def _contemplation(
        self, request: ChatRequest, pool: PoolConfig, num_agents: int, budget: int, media: list[EncodedMedia]
    ) -> ContemplationPrompts:
        return contemplation_prompts(
            self.chat_format,
            request.messages,
            offered_tools(request),
            num_agents,
            agent_reasoning=budget > 0,
            synthesis_thinking_budget=min(budget, pool.contemplating.synthesis_thinking_budget),
            media_tokens=lambda: self._media_tokens(media),
        )

    def _requested_budget(self, request: ChatRequest, pool: PoolConfig) -> int:
        mode = request.mode.mode
        if mode is Mode.INSTANT:
            return 0
        if not self.chat_format.can_reason:
            if mode is Mode.THINKING:
                raise FailedPrecondition(
                    f"model {pool.name} cannot reason: it serves no thinking mode", field="mode.mode"
                )
            return 0  # Contemplating on a model that cannot reason: its agents answer at once
        budget = request.mode.thinking_budget
        return pool.engine.default_thinking_budget if budget is None else budget


@dataclass(frozen=True, slots=True)
class LivePrompt:
    """A voice turn's prompt around its speech (`Preprocessor.prepare_live`)."""

    prepared: PreparedRequest  # the prompt before the speech; sampling and budgets resolved
    tail_ids: tuple[int, ...]  # after the speech: the end of the user turn, the generation prompt
    audio_placeholder: int  # the id each speech token takes in the prompt
    max_audio_tokens: int  # what the context window leaves the speech


def _speech_in_place(
    ids: Sequence[int], placeholder: int, history: Sequence[Sequence[MediaSegment]]
) -> tuple[MediaSegment, ...]:
    """Earlier turns' speech segments at their placeholder runs, in order (audio enters a voice
    prompt only as speech, so the k-th run is the k-th turn's)."""
    positions = [p for p, t in enumerate(ids) if t == placeholder]
    placed: list[MediaSegment] = []
    taken = 0
    for segments in history:
        n = sum(s.num_tokens for s in segments)
        run = positions[taken : taken + n]
        if len(run) != n or (n and run[-1] - run[0] != n - 1):
            raise Internal("earlier speech is not where the template put it")
        placed += [replace(s, start=run[0] + s.start) for s in segments] if n else []
        taken += n
    return tuple(placed)


def _reasoning_positions(budget: int) -> int:
    """A reasoning segment of `budget` tokens also holds its closing marker."""
    return budget + 1 if budget > 0 else 0


def _room_after_prompt(ids: list[int], window: ContextWindow, field: str = "messages") -> int:
    """Positions left for generation; at least one, or the prompt is refused."""
    room = window.tokens - len(ids)
    if room < 1:
        raise InvalidArgument(
            f"the prompt is {len(ids)} tokens; model {window.pool} reads at most {window.tokens - 1} prompt "
            f"tokens: its context window is {window.tokens} tokens {window.limit}",
            field=field,
        )
    return room


def offered_tools(request: ChatRequest) -> tuple[ToolSpec, ...]:
    """The tools the prompt shows: none with tool_choice NONE, so the model cannot call one."""
    return () if request.tool_choice.kind is ToolChoiceKind.NONE else request.tools
