"""The OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/models`).

schemas: the request body, as pydantic models (also the OpenAPI document).
convert: request body -> domain `ChatRequest` (mode, sampling, media, tools).
output: domain results and stream events -> `chat.completion` JSON and SSE chunks.
errors: `MuseError` and validation errors -> OpenAI's error JSON and HTTP status.
http_api: the route handlers over a `Gateway`; the Serve ingress only wires them.
"""
