"""A stored response's input, as `GET /v1/responses/{id}/input_items` lists it.

The input is the turn's own messages (`StoredResponse.input_messages`), not the earlier
turns a `previous_response_id` brought in. Each message becomes the items it was sent as:
a user, system or assistant `message`, an assistant turn's calls as `function_call` items,
a tool message as a `function_call_output`. Ids derive from the response id and the item's
place, so `after` pages through the same list on any gateway replica.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from museserve.domain import AudioPart, ContentPart, ImagePart, Message, Role, TextPart
from museserve.errors import InvalidArgument

MAX_LIMIT = 100


def input_items(response_id: str, messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The items in the order they were sent."""
    hex_id = response_id.removeprefix("resp_")
    items: list[dict[str, Any]] = []

    def next_id(prefix: str) -> str:
        return f"{prefix}_{hex_id}_in{len(items)}"

    for m in messages:
        if m.role is Role.TOOL:
            items.append({"id": next_id("fco"), "type": "function_call_output", "call_id": m.tool_call_id,
                          "output": m.text, "status": "completed"})  # fmt: skip
            continue
        if m.role is Role.ASSISTANT:
            if m.parts or not m.tool_calls:
                content = [{"type": "output_text", "text": m.text, "annotations": []}]
                items.append({"id": next_id("msg"), "type": "message", "role": "assistant", "content": content,
                              "status": "completed"})  # fmt: skip
            for call in m.tool_calls:
                items.append({"id": next_id("fc"), "type": "function_call", "call_id": call.id, "name": call.name,
                              "arguments": call.arguments_json, "status": "completed"})  # fmt: skip
            continue
        role = "system" if m.role is Role.SYSTEM else "user"
        content = [_part_json(p) for p in m.parts]
        items.append({"id": next_id("msg"), "type": "message", "role": role, "content": content, "status": "completed"})
    return items


def _part_json(p: ContentPart) -> dict[str, Any]:
    match p:
        case TextPart(text):
            return {"type": "input_text", "text": text}
        case ImagePart(data, url, mime_type):
            if data is None:
                return {"type": "input_image", "image_url": url, "detail": "auto"}
            encoded = base64.b64encode(data).decode()
            return {"type": "input_image", "image_url": f"data:{mime_type};base64,{encoded}", "detail": "auto"}
        case AudioPart(data, audio_format):
            return {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(data).decode(), "format": audio_format},
            }
    raise TypeError(f"not a content part: {type(p).__name__}")


def item_page(
    items: list[dict[str, Any]], after: str | None, limit: int, order: Literal["asc", "desc"]
) -> dict[str, Any]:
    """One page of a cursor list, as OpenAI's list endpoints answer: `after` is the id of the
    last item of the page before."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"must be between 1 and {MAX_LIMIT}", field="limit")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise InvalidArgument(f"no item {after!r} in this response's input", field="after")
        start = ids.index(after) + 1
    page = ordered[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
        "has_more": start + limit < len(ordered),
    }
