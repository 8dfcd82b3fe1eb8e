"""A chat format: how a pool's checkpoint turns a conversation into prompt ids, and the ids
and texts the engine acts on while it generates.

Two formats implement it: the Muse format (`muse_format`: control tokens inserted by id)
and a checkpoint's own Jinja template (`jinja_format`). Whatever the format, client text is
encoded with `Tokenizer.encode_text`, so no client string becomes a control token.

A prompt ends with the assistant's generation prompt. With `reasoning`, it also opens the
reasoning segment (the format's `think` open marker is its last token), so everything the
model writes until the close marker is reasoning; without it, a format whose model can
reason closes the segment empty (or its template does), and the model answers at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from museserve.domain import AudioPart, ImagePart, Message, ToolSpec
from museserve.preprocess.tokenizer import Tokenizer

MediaPart = ImagePart | AudioPart
# Maps one image or audio part to the ids that stand for it in the prompt.
MediaTokens = Callable[[MediaPart], list[int]]


@dataclass(frozen=True, slots=True)
class Markers:
    """What the engine needs of a format: plain values, picklable, no tokenizer."""

    stop_ids: frozenset[int]  # end of sequence and end of turn: generation stops at any
    think: tuple[int, int] | None = None  # (open, close) ids of the reasoning segment; None: cannot reason
    tool_call_ids: tuple[int, int] | None = None  # control tokens around a call's JSON (Muse)
    tool_call_text: tuple[str, str] | None = None  # text around a call's JSON (Hermes: <tool_call> ... </tool_call>)
    media_ids: Mapping[str, int] = field(default_factory=dict)  # placeholder id per media kind (Muse)

    @property
    def think_close_id(self) -> int | None:
        return self.think[1] if self.think is not None else None


class ChatFormat(ABC):
    """Renders conversations for one checkpoint; shared by every request of its pools."""

    name: str  # "muse" or "jinja", for logs and errors
    tokenizer: Tokenizer
    markers: Markers

    @property
    def can_reason(self) -> bool:
        return self.markers.think is not None

    @property
    def media_kinds(self) -> frozenset[str]:
        """Media the format can place in a prompt (the model must also have projectors)."""
        return frozenset(self.markers.media_ids)

    def single_placeholder(self, part: MediaPart) -> list[int]:
        """One placeholder per media part, to render without decoded media (counting bounds)."""
        return [self.markers.media_ids["image" if isinstance(part, ImagePart) else "audio"]]

    @abstractmethod
    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        reasoning: bool,
        media_tokens: MediaTokens | None = None,
    ) -> list[int]:
        """The prompt ids of a conversation, ending with the generation prompt."""

    @abstractmethod
    def render_split(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        reasoning: bool,
        media_tokens: MediaTokens | None = None,
    ) -> tuple[list[int], list[int]]:
        """`render` cut at the end of the last message's text: text encoded on its own and put
        between the two parts reads as the end of that message (Contemplating's synthesis turn
        takes the agents' answers there)."""
