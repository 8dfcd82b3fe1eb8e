"""The request body of `POST /v1/completions`: a plain-text completion of a raw prompt.

The prompt goes to the model as is: no chat template, instant mode, no tools. Field names
follow OpenAI's legacy API and vLLM's extensions of it; as in `schemas`, what museserve
cannot honour is declared so its refusal names it, and any other field is refused.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from museserve.api.openai.schemas import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    N_DESCRIPTION,
    Choices,
    Count,
    Penalty,
    Probability,
    StreamOptions,
    Strict,
)

# Strict: JSON `true` is not the token id 1, nor `logprobs: 1` (a chat client's `logprobs: true`).
TokenId = Annotated[int, Field(strict=True, ge=0, le=INT32_MAX)]
# OpenAI's legacy API allowed 5 alternatives; vLLM allows 20, as museserve's chat `top_logprobs`.
MAX_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions

# Refused when set (not null, not empty).
UNSUPPORTED_COMPLETION_FIELDS = ("suffix", "logit_bias")


class CompletionRequest(Strict):
    model: str = Field(
        "",
        description="A served model (GET /v1/models), optionally with a LoRA adapter: `muse-tiny:support`; "
        "empty: the default model.",
    )
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]] = Field(
        description="A string or a list of token ids (also as a one-element list); one prompt per request."
    )
    echo: bool | None = Field(None, description="The answer's text starts with the prompt.")
    logprobs: Annotated[int, Field(strict=True, ge=0, le=MAX_LOGPROBS)] | None = Field(
        None,
        description=f"Log probabilities of the answer's tokens (with echo, the prompt's too) and this many "
        f"alternatives at each position, 0-{MAX_LOGPROBS} (OpenAI's legacy bound is 5, vLLM's 20).",
    )
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = Field(
        None, description=f"Answer tokens; default {DEFAULT_MAX_TOKENS}, as OpenAI's."
    )
    stop: str | list[str] | None = None
    n: Choices | None = Field(None, description=N_DESCRIPTION)
    best_of: Choices | None = Field(None, description="Only equal to n: answers are not ranked.")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: str | None = Field(None, description="The end user, when no x-user-id header is sent.")
    # vLLM's sampling extensions (the official client sends them through `extra_body`).
    top_k: Count | None = None
    min_tokens: Count | None = Field(None, description="Tokens generated before an end token may end the answer.")
    ignore_eos: bool | None = Field(None, description="Generate past end tokens: only max_tokens and stop end it.")
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    skip_special_tokens: bool | None = Field(None, description="Leave special tokens out of the text (default true).")
    speculative: Literal["auto", "off"] | None = Field(
        None, description="off: no speculative decoding for this request (auto: as the model's pool is configured)."
    )
    # Refused when set: see UNSUPPORTED_COMPLETION_FIELDS.
    suffix: str | None = Field(None, description="Not supported: no insertion.")
    logit_bias: dict[str, int] | None = Field(None, description="Not supported.")
