"""Input items of `POST /v1/responses`: messages and their content parts, function calls and
their outputs, reasoning items and item references.

Unions whose members are told apart by `type` use tags written in capitals: pydantic puts a
tag in an error's location, and `errors.param_from_loc` leaves capitalised names out, so a
bad field is named `input[0].content`, never `input[0].Message.content`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from museserve.api.openai.schemas import Strict

ItemStatus = Literal["in_progress", "completed", "incomplete"]


def type_tag(tags: dict[str, str], default: str, other: str | None = None) -> Any:
    """A discriminator: the member's capitalised tag by its `type` (absent: `default`); an
    unknown type is `other`'s member, or (None) refused with the type it has."""

    def tag(value: Any) -> str:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        if not isinstance(kind, str):
            return other or "not a string"
        return tags.get(kind, other or kind)

    return Discriminator(tag)


class InputText(Strict):
    type: Literal["input_text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = Field(None, description="Accepted and ignored.")


class InputImage(Strict):
    type: Literal["input_image"]
    image_url: str | None = Field(None, description="An http(s) URL (where policy allows) or a base64 data: URL.")
    file_id: str | None = Field(None, description="Not supported: send image_url.")
    detail: Literal["auto", "low", "high", "original"] | None = Field(None, description="Accepted and ignored.")
    prompt_cache_breakpoint: dict[str, Any] | None = Field(None, description="Accepted and ignored.")


class InputAudioData(Strict):
    data: str = Field(description="Base64-encoded audio file bytes.")
    format: Literal["wav", "mp3"] = Field(description="Only wav.")


class InputAudio(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudioData


class InputFile(Strict):
    """Declared so that the refusal names it: files are not supported."""

    type: Literal["input_file"]
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None
    detail: str | None = None


class OutputText(Strict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = Field(None, description="Accepted and ignored.")
    logprobs: list[Any] | None = Field(None, description="Accepted and ignored.")


class Refusal(Strict):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    InputText | InputImage | InputAudio | InputFile | OutputText | Refusal, Field(discriminator="type")
]


class MessageItem(Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    # What a client echoes back from an earlier response's output; ignored.
    id: str | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(Strict):
    """A call the model made earlier, sent back with its output (`FunctionCallOutputItem`)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="The arguments as a JSON object, serialised.")
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: ItemStatus | None = None


class ReasoningItem(Strict):
    """An earlier answer's reasoning, echoed back: accepted and left out of the prompt (the
    chat formats do not show a model its earlier turns' reasoning)."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] | None = None
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None


class ItemReference(Strict):
    """Declared so that the refusal names it: use previous_response_id instead."""

    type: Literal["item_reference"]
    id: str


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")]
    | Annotated[ItemReference, Tag("ItemReference")],
    type_tag(
        {"message": "Message", "function_call": "FunctionCall", "function_call_output": "FunctionCallOutput",
         "reasoning": "Reasoning", "item_reference": "ItemReference"},
        "message",
    ),
]  # fmt: skip
