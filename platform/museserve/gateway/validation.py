"""Checks a request against the request limits and its pool before any work starts.

Every refusal is an `InvalidArgument` naming the field by its path in the API
(`messages[2].content`, `sampling.top_p`), so a client can fix exactly that field.
Prompt length against the pool's context window is checked next, by the preprocess tier once
the prompt is tokenized; both before the gateway charges any rate limit.
"""

from __future__ import annotations

import json
import re

import jsonschema

from museserve.config import PoolConfig, RequestLimits
from museserve.domain import (
    AudioPart,
    ChatRequest,
    ImagePart,
    Message,
    Mode,
    ResponseFormatKind,
    Role,
    TextPart,
    ToolChoiceKind,
)
from museserve.errors import FailedPrecondition, InvalidArgument

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MIN_AGENTS, MAX_AGENTS = 2, 8
MAX_STOP_TOKEN_IDS = 16
MAX_TOP_LOGPROBS = 20


def validate_request(
    request: ChatRequest, pool: PoolConfig, limits: RequestLimits, *, max_output_tokens: int | None = None
) -> None:
    """`max_output_tokens`: the pool's cap within its context window (`ContextWindow.max_output_tokens`);
    None: `engine.max_output_tokens`."""
    cap = pool.engine.max_output_tokens if max_output_tokens is None else max_output_tokens
    if request.prompt is not None:
        _check_raw_prompt(request, limits)
    else:
        _check_messages(request.messages, limits)
    _check_tools(request, limits)
    _check_response_format(request)
    _check_sampling(request, pool, limits, cap)
    _check_answers(request, pool, limits, cap)
    _check_mode(request, pool, cap)


def _check_messages(messages: tuple[Message, ...], limits: RequestLimits) -> None:
    if not messages:
        raise InvalidArgument("at least one message is required", field="messages")
    if len(messages) > limits.max_messages:
        raise InvalidArgument(f"at most {limits.max_messages} messages are allowed", field="messages")
    text_bytes = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if len(message.parts) > limits.max_parts_per_message:
            raise InvalidArgument(
                f"at most {limits.max_parts_per_message} content parts are allowed", field=f"{where}.content"
            )
        for j, part in enumerate(message.parts):
            if isinstance(part, TextPart):
                text_bytes += len(part.text.encode("utf-8", errors="surrogatepass"))
            elif isinstance(part, ImagePart) and (part.data is None) == (part.url is None):
                raise InvalidArgument("exactly one of data and url must be set", field=f"{where}.content[{j}].image")
            elif isinstance(part, AudioPart) and not part.data:
                raise InvalidArgument("audio data must not be empty", field=f"{where}.content[{j}].audio.data")
        has_content = any(not isinstance(p, TextPart) or p.text.strip() for p in message.parts)
        if message.role is Role.ASSISTANT and message.tool_calls:
            has_content = True
        if not has_content:
            raise InvalidArgument("content must not be empty", field=f"{where}.content")
        if message.role is Role.TOOL and not message.tool_call_id:
            raise InvalidArgument("tool messages must name the call they answer", field=f"{where}.tool_call_id")
        if message.tool_calls and message.role is not Role.ASSISTANT:
            raise InvalidArgument("only assistant messages carry tool calls", field=f"{where}.tool_calls")
    if text_bytes > limits.max_text_bytes:
        raise InvalidArgument(f"text exceeds {limits.max_text_bytes} bytes ({text_bytes})", field="messages")
    if messages[-1].role is Role.ASSISTANT:
        raise InvalidArgument(
            "the last message must not be from the assistant", field=f"messages[{len(messages) - 1}].role"
        )


def _check_raw_prompt(request: ChatRequest, limits: RequestLimits) -> None:
    """A plain completion: the prompt as sent, answered in Instant mode as free text."""
    prompt = request.prompt
    assert prompt is not None
    if request.messages:
        raise InvalidArgument("a request has a prompt or messages, not both", field="messages")
    if (prompt.text is None) == (prompt.token_ids is None):
        raise InvalidArgument("exactly one of text and token ids must be set", field="prompt")
    if prompt.text is not None:
        if not prompt.text:
            raise InvalidArgument("must not be empty", field="prompt")
        size = len(prompt.text.encode("utf-8", errors="surrogatepass"))
        if size > limits.max_text_bytes:
            raise InvalidArgument(f"text exceeds {limits.max_text_bytes} bytes ({size})", field="prompt")
    elif not prompt.token_ids:
        raise InvalidArgument("must not be empty", field="prompt")
    elif min(prompt.token_ids) < 0:
        raise InvalidArgument("token ids must not be negative", field="prompt")
    if request.mode.mode is not Mode.INSTANT:
        raise InvalidArgument("a plain completion is answered in instant mode", field="mode.mode")
    if request.tools or request.tool_choice.kind not in (ToolChoiceKind.AUTO, ToolChoiceKind.NONE):
        raise InvalidArgument("a plain completion takes no tools", field="tools")
    if request.response_format.kind is not ResponseFormatKind.TEXT:
        raise InvalidArgument("a plain completion is free text", field="response_format")


def _check_answers(request: ChatRequest, pool: PoolConfig, limits: RequestLimits, cap: int) -> None:
    """n answers (decoded together: at most the pool's batch), min_tokens and prompt log probabilities."""
    s = request.sampling
    most = min(limits.max_choices, pool.engine.max_running_requests)
    if not 1 <= s.n <= most:
        raise InvalidArgument(f"must be between 1 and {most} for model {pool.name}", field="sampling.n")
    contemplating = request.mode.mode is Mode.CONTEMPLATING
    if s.n > 1 and contemplating:
        raise InvalidArgument(
            "contemplating gives one answer: its agents are its parallel attempts", field="sampling.n"
        )
    upper = min(cap, s.max_output_tokens or cap)
    if not 0 <= s.min_tokens <= upper:
        raise InvalidArgument(f"must be between 0 and max_output_tokens ({upper})", field="sampling.min_tokens")
    if s.min_tokens and request.response_format.kind is not ResponseFormatKind.TEXT:
        raise InvalidArgument(
            "a JSON answer ends when its value closes: leave min_tokens out", field="sampling.min_tokens"
        )
    if s.prompt_logprobs is not None:
        if not 0 <= s.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidArgument(f"must be between 0 and {MAX_TOP_LOGPROBS}", field="sampling.prompt_logprobs")
        if contemplating:
            raise InvalidArgument("not with contemplating", field="sampling.prompt_logprobs")


def _check_tools(request: ChatRequest, limits: RequestLimits) -> None:
    if len(request.tools) > limits.max_tools:
        raise InvalidArgument(f"at most {limits.max_tools} tools are allowed", field="tools")
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        if not TOOL_NAME.fullmatch(tool.name):
            raise InvalidArgument("names use letters, digits, _ and -, 1 to 64 characters", field=f"tools[{i}].name")
        if tool.name in names:
            raise InvalidArgument(f"tool {tool.name!r} is declared twice", field=f"tools[{i}].name")
        names.add(tool.name)
        where = f"tools[{i}].parameters_json_schema"
        schema = _json_schema(tool.parameters_json_schema or "{}", where)
        if schema.get("type", "object") != "object":
            raise InvalidArgument('the arguments must be an object: type must be "object"', field=where)
    choice = request.tool_choice
    if choice.kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED) and not request.tools:
        raise InvalidArgument(f"tool_choice {choice.kind} needs at least one tool", field="tool_choice.kind")
    if choice.kind is ToolChoiceKind.NAMED and choice.name not in names:
        raise InvalidArgument(f"no tool named {choice.name!r} was declared", field="tool_choice.name")


def _check_response_format(request: ChatRequest) -> None:
    f = request.response_format
    if f.kind is ResponseFormatKind.JSON_SCHEMA:
        if not f.json_schema.strip():
            raise InvalidArgument("a JSON schema is required", field="response_format.json_schema")
        _json_schema(f.json_schema, "response_format.json_schema")
    elif f.json_schema:
        raise InvalidArgument("only with kind JSON_SCHEMA", field="response_format.json_schema")


def _json_schema(text: str, where: str) -> dict:
    """Parses a JSON Schema object and checks it against its draft's meta-schema."""
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"not valid JSON: {e}", field=where) from None
    if not isinstance(schema, dict):
        raise InvalidArgument("must be a JSON object", field=where)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "/".join(str(p) for p in e.path)
        raise InvalidArgument(
            f"not a valid JSON Schema{' at ' + path if path else ''}: {e.message}", field=where
        ) from None
    return schema


def _check_sampling(request: ChatRequest, pool: PoolConfig, limits: RequestLimits, cap: int) -> None:
    s = request.sampling
    if s.temperature is not None and not 0.0 <= s.temperature <= 2.0:
        raise InvalidArgument("must be between 0 and 2", field="sampling.temperature")
    if s.top_p is not None and not 0.0 < s.top_p <= 1.0:
        raise InvalidArgument("must be in (0, 1]", field="sampling.top_p")
    if s.top_k is not None and s.top_k < 0:
        raise InvalidArgument("must not be negative", field="sampling.top_k")
    if s.max_output_tokens is not None and not 1 <= s.max_output_tokens <= cap:
        raise InvalidArgument(f"must be between 1 and {cap} for model {pool.name}", field="sampling.max_output_tokens")
    if len(s.stop) > limits.max_stop_strings:
        raise InvalidArgument(f"at most {limits.max_stop_strings} stop strings are allowed", field="sampling.stop")
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2.0 <= getattr(s, name) <= 2.0:
            raise InvalidArgument("must be between -2 and 2", field=f"sampling.{name}")
    if s.repetition_penalty is not None and not 0.0 < s.repetition_penalty <= 2.0:
        raise InvalidArgument("must be in (0, 2]", field="sampling.repetition_penalty")
    if len(s.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidArgument(
            f"at most {MAX_STOP_TOKEN_IDS} stop token ids are allowed", field="sampling.stop_token_ids"
        )
    for i, token_id in enumerate(s.stop_token_ids):
        if token_id < 0:
            raise InvalidArgument("must not be negative", field=f"sampling.stop_token_ids[{i}]")
    if not 0 <= s.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"must be between 0 and {MAX_TOP_LOGPROBS}", field="sampling.top_logprobs")
    if s.top_logprobs and not s.logprobs:
        raise InvalidArgument("needs sampling.logprobs", field="sampling.top_logprobs")
    for i, stop in enumerate(s.stop):
        if not stop or len(stop) > limits.max_stop_string_chars:
            raise InvalidArgument(
                f"must be 1 to {limits.max_stop_string_chars} characters", field=f"sampling.stop[{i}]"
            )


def _check_mode(request: ChatRequest, pool: PoolConfig, cap: int) -> None:
    """`pool.modes` is resolved against the pool's checkpoint at start-up (`pool_model.check_pools`)."""
    m = request.mode
    if pool.modes is not None and m.mode not in pool.modes:
        served = ", ".join(pool.modes)
        raise FailedPrecondition(
            f"model {pool.name} does not serve mode {m.mode} (it serves: {served})", field="mode.mode"
        )
    if m.thinking_budget is not None:
        if m.mode is Mode.INSTANT:
            raise InvalidArgument("only THINKING and CONTEMPLATING take a budget", field="mode.thinking_budget")
        if not 0 <= m.thinking_budget <= cap:
            raise InvalidArgument(f"must be between 0 and {cap}", field="mode.thinking_budget")
    if m.num_agents is not None:
        if m.mode is not Mode.CONTEMPLATING:
            raise InvalidArgument("only CONTEMPLATING takes a number of agents", field="mode.num_agents")
        if not MIN_AGENTS <= m.num_agents <= MAX_AGENTS:
            raise InvalidArgument(f"must be between {MIN_AGENTS} and {MAX_AGENTS}", field="mode.num_agents")
