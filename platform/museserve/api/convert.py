"""Protobuf <-> domain types. The only module below `api/` that reads generated code.

`request_from_pb` refuses what cannot be represented (unset oneofs, enum values this
server does not know) with the field's path; everything else is checked in the gateway.
"""

from __future__ import annotations

from museserve.domain import (
    AgentProgress,
    AudioPart,
    ChatRequest,
    ChatResult,
    ContentPart,
    Finish,
    FinishReason,
    Identity,
    ImagePart,
    LogprobsDelta,
    Message,
    Mode,
    ModelInfo,
    ModeParams,
    PositionLogprobs,
    ReasoningDelta,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    TextPart,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
    ToolChoice,
    ToolChoiceKind,
    ToolSpec,
    Usage,
)
from museserve.errors import InvalidArgument
from museserve.v1 import chat_pb2 as pb

_ROLES = {
    pb.ROLE_SYSTEM: Role.SYSTEM,
    pb.ROLE_USER: Role.USER,
    pb.ROLE_ASSISTANT: Role.ASSISTANT,
    pb.ROLE_TOOL: Role.TOOL,
}
_MODES = {
    pb.MODE_UNSPECIFIED: Mode.INSTANT,
    pb.MODE_INSTANT: Mode.INSTANT,
    pb.MODE_THINKING: Mode.THINKING,
    pb.MODE_CONTEMPLATING: Mode.CONTEMPLATING,
}
_MODES_PB = {Mode.INSTANT: pb.MODE_INSTANT, Mode.THINKING: pb.MODE_THINKING, Mode.CONTEMPLATING: pb.MODE_CONTEMPLATING}
_TOOL_CHOICES = {
    pb.ToolChoice.KIND_AUTO: ToolChoiceKind.AUTO,
    pb.ToolChoice.KIND_NONE: ToolChoiceKind.NONE,
    pb.ToolChoice.KIND_REQUIRED: ToolChoiceKind.REQUIRED,
    pb.ToolChoice.KIND_NAMED: ToolChoiceKind.NAMED,
}
_RESPONSE_FORMATS = {
    pb.ResponseFormat.KIND_UNSPECIFIED: ResponseFormatKind.TEXT,
    pb.ResponseFormat.KIND_TEXT: ResponseFormatKind.TEXT,
    pb.ResponseFormat.KIND_JSON_OBJECT: ResponseFormatKind.JSON_OBJECT,
    pb.ResponseFormat.KIND_JSON_SCHEMA: ResponseFormatKind.JSON_SCHEMA,
}
_FINISH_PB = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}


def request_from_pb(msg: pb.ChatRequest, request_id: str, identity: Identity) -> ChatRequest:
    return ChatRequest(
        request_id=request_id,
        messages=tuple(_message_from_pb(m, f"messages[{i}]") for i, m in enumerate(msg.messages)),
        model=msg.model,
        tools=tuple(ToolSpec(t.name, t.description, t.parameters_json_schema) for t in msg.tools),
        tool_choice=_tool_choice_from_pb(msg),
        sampling=_sampling_from_pb(msg.sampling),
        mode=_mode_from_pb(msg.mode),
        identity=identity,
        response_format=_response_format_from_pb(msg.response_format),
        previous_response_id=msg.previous_response_id,
        store=msg.store,
        adapter=msg.adapter,
    )


def _response_format_from_pb(f: pb.ResponseFormat) -> ResponseFormat:
    kind = _RESPONSE_FORMATS.get(f.kind)
    if kind is None:
        raise InvalidArgument(f"unknown response format {f.kind}", field="response_format.kind")
    return ResponseFormat(kind, f.json_schema, f.strict if f.HasField("strict") else True)


def _message_from_pb(msg: pb.Message, where: str) -> Message:
    role = _ROLES.get(msg.role)
    if role is None:
        reason = "role must be set" if msg.role == pb.ROLE_UNSPECIFIED else f"unknown role {msg.role}"
        raise InvalidArgument(reason, field=f"{where}.role")
    parts = tuple(_part_from_pb(p, f"{where}.content[{j}]") for j, p in enumerate(msg.content))
    calls = tuple(ToolCall(c.id, c.name, c.arguments_json) for c in msg.tool_calls)
    return Message(role, parts, msg.name, msg.tool_call_id, calls)


def _part_from_pb(part: pb.ContentPart, where: str) -> ContentPart:
    kind = part.WhichOneof("part")
    if kind == "text":
        return TextPart(part.text)
    if kind == "image":
        source = part.image.WhichOneof("source")
        if source is None:
            raise InvalidArgument("one of data and url must be set", field=f"{where}.image")
        if source == "data":
            return ImagePart(data=part.image.data, mime_type=part.image.mime_type)
        return ImagePart(url=part.image.url, mime_type=part.image.mime_type)
    if kind == "audio":
        return AudioPart(data=part.audio.data, format=part.audio.format)
    raise InvalidArgument("one of text, image and audio must be set", field=where)


def _tool_choice_from_pb(msg: pb.ChatRequest) -> ToolChoice:
    kind = msg.tool_choice.kind
    if kind == pb.ToolChoice.KIND_UNSPECIFIED:
        return ToolChoice(ToolChoiceKind.AUTO if msg.tools else ToolChoiceKind.NONE)
    if kind not in _TOOL_CHOICES:
        raise InvalidArgument(f"unknown tool choice {kind}", field="tool_choice.kind")
    return ToolChoice(_TOOL_CHOICES[kind], msg.tool_choice.name)


def _sampling_from_pb(s: pb.SamplingParams) -> SamplingParams:
    if s.speculative not in (pb.SPECULATION_AUTO, pb.SPECULATION_OFF):
        raise InvalidArgument(f"unknown speculation {s.speculative}", field="sampling.speculative")
    return SamplingParams(
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        top_k=s.top_k or None,
        seed=s.seed if s.HasField("seed") else None,
        max_output_tokens=s.max_output_tokens if s.HasField("max_output_tokens") else None,
        stop=tuple(s.stop),
        presence_penalty=s.presence_penalty if s.HasField("presence_penalty") else 0.0,
        frequency_penalty=s.frequency_penalty if s.HasField("frequency_penalty") else 0.0,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else None,
        stop_token_ids=tuple(s.stop_token_ids),
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
        min_tokens=s.min_tokens,
        ignore_eos=s.ignore_eos,
        speculative=s.speculative != pb.SPECULATION_OFF,
    )


def _mode_from_pb(m: pb.ModeParams) -> ModeParams:
    mode = _MODES.get(m.mode)
    if mode is None:
        raise InvalidArgument(f"unknown mode {m.mode}", field="mode.mode")
    return ModeParams(
        mode=mode,
        thinking_budget=m.thinking_budget if m.HasField("thinking_budget") else None,
        num_agents=m.num_agents if m.HasField("num_agents") else None,
    )


def usage_to_pb(u: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=u.prompt_tokens,
        cached_tokens=u.cached_tokens,
        reasoning_tokens=u.reasoning_tokens,
        output_tokens=u.output_tokens,
        total_tokens=u.total_tokens,
    )


def tool_call_to_pb(c: ToolCall) -> pb.ToolCall:
    return pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments_json)


def event_to_pb(event: StreamEvent, request_id: str) -> pb.ChatEvent:
    match event:
        case TextDelta(text):
            return pb.ChatEvent(text_delta=text)
        case ReasoningDelta(text):
            return pb.ChatEvent(reasoning_delta=text)
        case LogprobsDelta(positions):
            return pb.ChatEvent(logprobs=pb.LogprobsDelta(positions=[_position_to_pb(p) for p in positions]))
        case ToolCallEvent(call):
            return pb.ChatEvent(tool_call=tool_call_to_pb(call))
        case AgentProgress(index, tokens, done):
            return pb.ChatEvent(agent_progress=pb.AgentProgress(agent_index=index, generated_tokens=tokens, done=done))
        case Usage():
            return pb.ChatEvent(usage=usage_to_pb(event))
        case Finish(reason, model, degraded, response_id):
            finish = pb.Finish(
                reason=_FINISH_PB[reason],
                model=model,
                request_id=request_id,
                degraded=degraded,
                response_id=response_id,
            )
            return pb.ChatEvent(finish=finish)
    raise TypeError(f"not a stream event: {event!r}")


def result_to_pb(result: ChatResult, request_id: str) -> pb.ChatResponse:
    return pb.ChatResponse(
        text=result.text,
        reasoning=result.reasoning,
        tool_calls=[tool_call_to_pb(c) for c in result.tool_calls],
        usage=usage_to_pb(result.usage),
        finish_reason=_FINISH_PB[result.finish_reason],
        model=result.model,
        request_id=request_id,
        logprobs=[_position_to_pb(p) for p in result.logprobs],
        degraded=result.degraded,
        response_id=result.response_id,
    )


def _token_to_pb(t: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(token=t.token, token_id=t.token_id, logprob=t.logprob)


def _position_to_pb(p: PositionLogprobs) -> pb.PositionLogprobs:
    return pb.PositionLogprobs(chosen=_token_to_pb(p.chosen), top=[_token_to_pb(t) for t in p.top])


def model_info_to_pb(info: ModelInfo, is_default: bool) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        context_length=info.context_length,
        max_output_tokens=info.max_output_tokens,
        modes=[_MODES_PB[m] for m in info.modes],
        is_default=is_default,
        adapters=list(info.adapters),
    )
