"""OpenAI chat request -> domain `ChatRequest`.

Errors raised here name the field as OpenAI's API spells it (`messages[0].content[1].image_url.url`);
errors from the gateway name domain fields and are renamed in `errors.openai_param`.

Mode: the model name may carry one (`muse-tiny:thinking`), or the body's `mode` field;
both given must agree. Any other suffix is a LoRA adapter (`muse-tiny:support`; `model_names`). Without either, a `reasoning_effort` other than `none` means
thinking. `reasoning_effort` also sets the thinking budget when `thinking_budget` is
not given: REASONING_BUDGETS, capped at the model's output limit.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from museserve.api.openai import schemas as s
from museserve.api.openai.model_names import ModelName, parse_model_name
from museserve.domain import (
    AudioPart,
    ChatRequest,
    ContentPart,
    Identity,
    ImagePart,
    Message,
    Mode,
    ModelInfo,
    ModeParams,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolChoiceKind,
    ToolSpec,
)
from museserve.errors import InvalidArgument, NotFound

REASONING_BUDGETS = {"minimal": 64, "low": 512, "medium": 2048, "high": 8192, "xhigh": 32768}
_ROLES = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}
_SCHEMA_FIELD = "response_format.json_schema.schema"
_TOOL_CHOICES = {"none": ToolChoiceKind.NONE, "auto": ToolChoiceKind.AUTO, "required": ToolChoiceKind.REQUIRED}


def request_from_openai(
    body: s.ChatCompletionRequest, request_id: str, identity: Identity, models: Mapping[str, ModelInfo]
) -> ChatRequest:
    """`models`: the served ones, the default first (`Gateway.list_models`)."""
    _refuse_unsupported(body)
    name = parse_model_name(body.model)
    model, mode = _model_and_mode(body, name, models)
    return ChatRequest(
        request_id=request_id,
        messages=tuple(_message(m, f"messages[{i}]") for i, m in enumerate(body.messages)),
        model=model.name if name.base else "",  # empty: the gateway routes by mode
        adapter=name.adapter,
        tools=tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(body.tools or ())),
        tool_choice=_tool_choice(body),
        sampling=_sampling(body),
        mode=mode,
        identity=identity,
        response_format=_response_format(body.response_format),
        usage_in_stream=bool(body.stream and body.stream_options and body.stream_options.continuous_usage_stats),
    )


def _refuse_unsupported(body: s.ChatCompletionRequest) -> None:
    for name in s.UNSUPPORTED_FIELDS:
        value = getattr(body, name)
        if name == "modalities" and value in (["text"], []):
            continue
        if value is not None and value != {} and value != []:
            raise InvalidArgument("is not supported by this server", field=name)


def served_model(name: str, models: Mapping[str, ModelInfo]) -> ModelInfo:
    """`models`: the served ones, the default first (`Gateway.list_models`); an empty name is the
    default, as over gRPC."""
    model = models.get(name) if name else next(iter(models.values()), None)
    if model is None:
        raise NotFound(f"the model {name!r} does not exist (served: {', '.join(models)})", field="model")
    return model


def _model_and_mode(
    body: s.ChatCompletionRequest, name: ModelName, models: Mapping[str, ModelInfo]
) -> tuple[ModelInfo, ModeParams]:
    model = served_model(name.base, models)
    modes = [m for m in (name.mode, body.mode) if m is not None]
    if len(set(modes)) > 1:
        raise InvalidArgument(f"the model suffix says {name.mode} but mode says {body.mode}", field="mode")
    effort = body.reasoning_effort
    if modes:
        mode = Mode(modes[0])
    else:
        mode = Mode.THINKING if effort not in (None, "none") else Mode.INSTANT
    budget = body.thinking_budget
    if effort is not None and mode is not Mode.INSTANT:
        if effort == "none":
            raise InvalidArgument(f"'none' contradicts mode {mode}", field="reasoning_effort")
        if budget is None:
            budget = min(REASONING_BUDGETS[effort], model.max_output_tokens)
    elif effort not in (None, "none"):
        raise InvalidArgument("instant mode does not reason: leave reasoning_effort out", field="reasoning_effort")
    return model, ModeParams(mode, budget, body.num_agents)


def _message(m: s.SystemMessage | s.UserMessage | s.AssistantMessage | s.ToolMessage, where: str) -> Message:
    role = _ROLES[m.role]
    if isinstance(m, s.ToolMessage):
        return Message(role, _parts(m.content, where), tool_call_id=m.tool_call_id)
    if isinstance(m, s.AssistantMessage):
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
        return Message(role, _parts(m.content, where), m.name or "", tool_calls=calls)
    return Message(role, _parts(m.content, where), m.name or "")


def _parts(content: str | list | None, where: str) -> tuple[ContentPart, ...]:
    if content is None:
        return ()
    if isinstance(content, str):
        return (TextPart(content),)
    return tuple(_part(p, f"{where}.content[{j}]") for j, p in enumerate(content))


def _part(p: s.TextContent | s.ImageContent | s.AudioContent | s.RefusalContent, where: str) -> ContentPart:
    if isinstance(p, s.TextContent):
        return TextPart(p.text)
    if isinstance(p, s.RefusalContent):
        return TextPart(p.refusal)
    if isinstance(p, s.AudioContent):
        data = base64_bytes(p.input_audio.data, f"{where}.input_audio.data")
        return AudioPart(data=data, format=p.input_audio.format)
    return image_part(p.image_url.url, f"{where}.image_url.url")


def image_part(url: str, field: str) -> ImagePart:
    """An http(s) URL, or a data: URL's bytes and MIME type."""
    if not url.startswith("data:"):
        return ImagePart(url=url)
    header, comma, payload = url[len("data:") :].partition(",")
    mime_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64":
        raise InvalidArgument("a data: URL must be data:<mime type>;base64,<data>", field=field)
    return ImagePart(data=base64_bytes(payload, field), mime_type=mime_type)


def base64_bytes(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("is not valid base64", field=field) from None


def json_text(value: Any, field: str) -> str:
    """`value` serialised; refuses text no tier below can encode (a lone surrogate)."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("text must be valid Unicode (a lone surrogate was sent)", field=field) from None
    return text


def _tool(t: s.Tool, where: str) -> ToolSpec:
    f = t.function
    parameters = f.parameters or {"type": "object", "properties": {}}
    return ToolSpec(f.name, f.description or "", json_text(parameters, f"{where}.function.parameters"))


def _tool_choice(body: s.ChatCompletionRequest) -> ToolChoice:
    choice = body.tool_choice
    if choice is None:
        return ToolChoice(ToolChoiceKind.AUTO if body.tools else ToolChoiceKind.NONE)
    if isinstance(choice, str):
        return ToolChoice(_TOOL_CHOICES[choice])
    return ToolChoice(ToolChoiceKind.NAMED, choice.function.name)


def _response_format(f: s.TextFormat | s.JsonObjectFormat | s.JsonSchemaFormat | None) -> ResponseFormat:
    if isinstance(f, s.JsonObjectFormat):
        return ResponseFormat(ResponseFormatKind.JSON_OBJECT)
    if isinstance(f, s.JsonSchemaFormat):
        spec = f.json_schema
        schema = json_text(spec.schema_ if spec.schema_ is not None else {"type": "object"}, _SCHEMA_FIELD)
        return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, schema, bool(spec.strict))  # OpenAI's default: not strict
    return ResponseFormat()


def _sampling(body: s.ChatCompletionRequest) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k or None,
        seed=body.seed,
        max_output_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        stop=stop,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        n=body.n or 1,
        min_tokens=body.min_tokens or 0,
        ignore_eos=bool(body.ignore_eos),
        skip_special_tokens=body.skip_special_tokens is not False,
        speculative=body.speculative != "off",
    )
