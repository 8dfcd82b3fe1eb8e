"""OpenAI completion body -> domain `ChatRequest` with a `RawPrompt`: no messages, no chat
template, instant mode, no tools. The model may name a LoRA adapter (`muse-tiny:support`;
`model_names`).

`logprobs` asks for the answer tokens' log probabilities; with `echo`, the prompt tokens'
too (`sampling.prompt_logprobs`, the same number of alternatives). A token-id prompt with
`echo` and no `logprobs` still asks for the prompt's, with no alternatives: their token
strings are the echoed text, as the edge holds no tokenizer (they are not sent as logprobs).
Errors name the field as OpenAI's API spells it; the gateway's are renamed in
`errors.openai_param`.
"""

from __future__ import annotations

from collections.abc import Mapping

from museserve.api.openai.completions_schemas import (
    DEFAULT_MAX_TOKENS,
    UNSUPPORTED_COMPLETION_FIELDS,
    CompletionRequest,
)
from museserve.api.openai.convert import served_model
from museserve.api.openai.model_names import ModelName, parse_model_name
from museserve.domain import (
    ChatRequest,
    Identity,
    Mode,
    ModelInfo,
    ModeParams,
    RawPrompt,
    SamplingParams,
    ToolChoice,
    ToolChoiceKind,
)
from museserve.errors import InvalidArgument

Prompt = str | list[int] | list[str] | list[list[int]]


def completion_request_from_openai(
    body: CompletionRequest, request_id: str, identity: Identity, models: Mapping[str, ModelInfo]
) -> ChatRequest:
    """`models`: the served ones, the default first (`Gateway.list_models`)."""
    for name in UNSUPPORTED_COMPLETION_FIELDS:
        if getattr(body, name) not in (None, "", {}):
            raise InvalidArgument("is not supported by this server", field=name)
    name = parse_model_name(body.model)
    model = _model(name, models)
    prompt = raw_prompt(body.prompt)
    return ChatRequest(
        request_id=request_id,
        messages=(),
        model=model.name,
        adapter=name.adapter,
        tool_choice=ToolChoice(ToolChoiceKind.NONE),
        sampling=_sampling(body, prompt, model),
        mode=ModeParams(Mode.INSTANT),
        identity=identity,
        prompt=prompt,
        usage_in_stream=bool(body.stream and body.stream_options and body.stream_options.continuous_usage_stats),
    )


def raw_prompt(prompt: Prompt) -> RawPrompt:
    """A string, token ids, or either alone in a list. Several prompts are refused: each would be
    its own request to the pools, with its own admission and limits."""
    if isinstance(prompt, str):
        return RawPrompt(text=prompt)
    if not prompt:
        raise InvalidArgument("must not be empty", field="prompt")
    first = prompt[0]
    if isinstance(first, int):
        return RawPrompt(token_ids=tuple(prompt))  # type: ignore[arg-type]  # a list of ints: pydantic's branch
    if len(prompt) > 1:
        raise InvalidArgument(
            f"one prompt per request: send a string or a list of token ids, not a list of {len(prompt)} prompts",
            field="prompt",
        )
    if isinstance(first, str):
        return RawPrompt(text=first)
    return RawPrompt(token_ids=tuple(first))


def _model(name: ModelName, models: Mapping[str, ModelInfo]) -> ModelInfo:
    if name.mode not in (None, Mode.INSTANT):
        raise InvalidArgument("a completion is answered in instant mode: name the model without a mode", field="model")
    return served_model(name.base, models)


def _sampling(body: CompletionRequest, prompt: RawPrompt, model: ModelInfo) -> SamplingParams:
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise InvalidArgument("must equal n: answers are not ranked", field="best_of")
    if body.echo and body.logprobs is not None:
        prompt_logprobs: int | None = body.logprobs
    elif body.echo and prompt.token_ids is not None:
        prompt_logprobs = 0  # the echoed text: see the module's docstring
    else:
        prompt_logprobs = None
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    max_tokens = body.max_tokens if body.max_tokens is not None else min(DEFAULT_MAX_TOKENS, model.max_output_tokens)
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k or None,
        seed=body.seed,
        max_output_tokens=max_tokens,
        stop=stop,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
        n=n,
        min_tokens=body.min_tokens or 0,
        ignore_eos=bool(body.ignore_eos),
        skip_special_tokens=body.skip_special_tokens is not False,
        prompt_logprobs=prompt_logprobs,
        speculative=body.speculative != "off",
    )
