"""The OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
`/v1/models`, and the `/v1/realtime` WebSocket).

schemas: the chat request body, as pydantic models (also the OpenAPI document).
convert: chat request body -> domain `ChatRequest` (mode, sampling, media, tools).
output, choice_stream: domain results and stream events -> `chat.completion` JSON and SSE
chunks; choice_stream is what chat and text-completion streams share (n answers, usage).
completions_schemas, completions_convert, completions_output: `/v1/completions` (a plain
prompt, echo, legacy logprobs).
responses_schemas, responses_convert, responses_items, responses_output, responses_stream,
responses_models, responses_http: the Responses API (typed events, stored responses).
realtime_schemas, realtime_settings, realtime_events, realtime_session, realtime: the Realtime
WebSocket (`/v1/realtime`): client events, session settings -> `VoiceSettings`, server events,
the protocol over a voice session, and the route.
errors: `MuseError` and validation errors -> OpenAI's error JSON and HTTP status.
http_common: identity, request ids and error responses every route shares.
http_api: the chat and completion route handlers over a `Gateway`; the Serve ingress only wires them.
"""
