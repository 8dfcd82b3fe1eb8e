"""`POST /v1/responses` body -> domain `ChatRequest`, the same request chat makes.

Input items become messages in order. A `function_call` item joins the assistant message
just before it (one assistant turn: its text, then its calls), or starts one; a
`function_call_output` item is a TOOL message answering its `call_id`. Reasoning items
echoed back are left out, as the chat formats leave earlier turns' reasoning out.

Errors raised here name the field as the Responses API spells it (`input[0].content[1].image_url`).
Mode, as for chat: the model's suffix (`muse-tiny:thinking`) or `mode`, else `reasoning.effort`
other than none means thinking, with a budget from `REASONING_BUDGETS` unless `thinking_budget`
is given. Any other suffix is a LoRA adapter (`muse-tiny:support`; `model_names`).
"""

from __future__ import annotations

from collections.abc import Mapping

from museserve.api.openai import responses_input as items_schema
from museserve.api.openai import responses_schemas as s
from museserve.api.openai.convert import REASONING_BUDGETS, base64_bytes, image_part, json_text, served_model
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
from museserve.errors import InvalidArgument

_ROLES = {"system": Role.SYSTEM, "developer": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT}
_TOOL_CHOICES = {"none": ToolChoiceKind.NONE, "auto": ToolChoiceKind.AUTO, "required": ToolChoiceKind.REQUIRED}


def request_from_responses(
    body: s.ResponseCreateRequest, request_id: str, identity: Identity, models: Mapping[str, ModelInfo]
) -> ChatRequest:
    """`models`: the served ones, the default first (`Gateway.list_models`)."""
    _refuse_unsupported(body)
    name = parse_model_name(body.model)
    model, mode = _model_and_mode(body, name, models)
    return ChatRequest(
        request_id=request_id,
        messages=input_messages(body.input),
        model=model.name if name.base else "",  # empty: the gateway routes by mode
        adapter=name.adapter,
        tools=tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(body.tools or ())),
        tool_choice=_tool_choice(body),
        sampling=SamplingParams(
            temperature=body.temperature, top_p=body.top_p, max_output_tokens=body.max_output_tokens
        ),
        mode=mode,
        identity=identity,
        response_format=_response_format(body.text),
        previous_response_id=body.previous_response_id or "",
        store=body.store is not False,  # OpenAI's default: stored
        instructions=body.instructions or "",
    )


def _refuse_unsupported(body: s.ResponseCreateRequest) -> None:
    for name in s.RESPONSES_UNSUPPORTED:
        value = getattr(body, name)
        if value not in (None, False, 0, [], {}):
            raise InvalidArgument("is not supported by this server", field=name)
    if body.truncation == "auto":
        raise InvalidArgument('only "disabled": a conversation over the context window is refused', field="truncation")
    if body.parallel_tool_calls is False:
        raise InvalidArgument("only true: the model may call several tools at once", field="parallel_tool_calls")


def _model_and_mode(
    body: s.ResponseCreateRequest, name: ModelName, models: Mapping[str, ModelInfo]
) -> tuple[ModelInfo, ModeParams]:
    model = served_model(name.base, models)
    modes = [m for m in (name.mode, body.mode) if m is not None]
    if len(set(modes)) > 1:
        raise InvalidArgument(f"the model suffix says {name.mode} but mode says {body.mode}", field="mode")
    effort = body.reasoning.effort if body.reasoning is not None else None
    mode = Mode(modes[0]) if modes else (Mode.THINKING if effort not in (None, "none") else Mode.INSTANT)
    budget = body.thinking_budget
    if effort is not None and mode is not Mode.INSTANT:
        if effort == "none":
            raise InvalidArgument(f"'none' contradicts mode {mode}", field="reasoning.effort")
        if budget is None:
            budget = min(REASONING_BUDGETS.get(effort, model.max_output_tokens), model.max_output_tokens)
    elif effort not in (None, "none"):
        raise InvalidArgument("instant mode does not reason: leave reasoning.effort out", field="reasoning.effort")
    return model, ModeParams(mode, budget, body.num_agents)


def input_messages(items: str | list[items_schema.InputItem]) -> tuple[Message, ...]:
    if isinstance(items, str):
        return (Message(Role.USER, (TextPart(items),)),)
    messages: list[Message] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, items_schema.MessageItem):
            role = _ROLES[item.role]
            messages.append(Message(role, _parts(item.content, role, f"{where}.content")))
        elif isinstance(item, items_schema.FunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            last = messages[-1] if messages else None
            if last is not None and last.role is Role.ASSISTANT:
                messages[-1] = Message(Role.ASSISTANT, last.parts, last.name, tool_calls=(*last.tool_calls, call))
            else:
                messages.append(Message(Role.ASSISTANT, tool_calls=(call,)))
        elif isinstance(item, items_schema.FunctionCallOutputItem):
            parts = _parts(item.output, Role.TOOL, f"{where}.output")
            messages.append(Message(Role.TOOL, parts, tool_call_id=item.call_id))
        elif isinstance(item, items_schema.ItemReference):
            raise InvalidArgument("item references are not supported: use previous_response_id", field=where)
        # ReasoningItem: left out (see the module docstring)
    return tuple(messages)


def _parts(content: str | list[items_schema.ContentPart], role: Role, where: str) -> tuple[ContentPart, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    return tuple(_part(p, role, f"{where}[{j}]") for j, p in enumerate(content))


def _part(p: items_schema.ContentPart, role: Role, where: str) -> ContentPart:
    if isinstance(p, items_schema.InputText):
        return TextPart(p.text)
    if isinstance(p, items_schema.OutputText | items_schema.Refusal):
        if role is not Role.ASSISTANT:
            raise InvalidArgument(f"{p.type} is for assistant messages (send input_text)", field=f"{where}.type")
        return TextPart(p.text if isinstance(p, items_schema.OutputText) else p.refusal)
    if isinstance(p, items_schema.InputFile):
        raise InvalidArgument("files are not supported: send text, images or audio", field=f"{where}.type")
    if role is Role.ASSISTANT or role is Role.SYSTEM:
        raise InvalidArgument(f"{p.type} is for user messages", field=f"{where}.type")
    if isinstance(p, items_schema.InputAudio):
        if p.input_audio.format != "wav":
            raise InvalidArgument("only wav audio is supported", field=f"{where}.input_audio.format")
        return AudioPart(base64_bytes(p.input_audio.data, f"{where}.input_audio.data"), "wav")
    return _image(p, where)


def _image(p: items_schema.InputImage, where: str) -> ImagePart:
    if p.file_id is not None:
        raise InvalidArgument("files are not supported: send image_url", field=f"{where}.file_id")
    url = p.image_url
    if not url:
        raise InvalidArgument("is required: an http(s) URL or a data: URL", field=f"{where}.image_url")
    return image_part(url, f"{where}.image_url")


def _tool(t: s.FunctionTool | s.HostedTool, where: str) -> ToolSpec:
    if isinstance(t, s.HostedTool):
        raise InvalidArgument(f"only function tools are supported (not {t.type!r})", field=f"{where}.type")
    parameters = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
    return ToolSpec(t.name, t.description or "", json_text(parameters, f"{where}.parameters"))


def _tool_choice(body: s.ResponseCreateRequest) -> ToolChoice:
    choice = body.tool_choice
    if choice is None:
        return ToolChoice(ToolChoiceKind.AUTO if body.tools else ToolChoiceKind.NONE)
    if isinstance(choice, str):
        return ToolChoice(_TOOL_CHOICES[choice])
    if isinstance(choice, s.HostedTool):
        raise InvalidArgument(f"only function tools are supported (not {choice.type!r})", field="tool_choice")
    return ToolChoice(ToolChoiceKind.NAMED, choice.name)


def _response_format(text: s.TextConfig | None) -> ResponseFormat:
    f = text.format if text is not None else None
    if isinstance(f, s.TextFormatJsonObject):
        return ResponseFormat(ResponseFormatKind.JSON_OBJECT)
    if isinstance(f, s.TextFormatJsonSchema):
        schema = json_text(f.schema_, "text.format.schema")
        return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, schema, bool(f.strict))  # OpenAI's default: not strict
    return ResponseFormat()
