"""Tokenizers as the platform uses them: client text in, ids out, and back.

`Tokenizer` wraps a Hugging Face `tokenizers.Tokenizer` (a checkpoint's tokenizer.json, one
built from a GGUF file, or the bundled one). Its one rule: `encode_text` treats its input
as plain text. No added token is matched in it, special or not, so a client who types
`<|im_end|>` or `<think>` gets the ids of those characters, never the token. Chat formats
insert control tokens by id, or split template text on them themselves (`jinja_format`).

`MuseTokenizer` is the bundled byte-level BPE tokenizer with the Muse format's control
tokens, which it must hold (see `special_tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from tokenizers import Tokenizer as HFTokenizer

from museserve.preprocess import special_tokens as st

BUNDLED_TOKENIZER_PATH = Path(__file__).parent / "assets" / "muse-tokenizer.json"
TOKENIZER_FILENAME = "tokenizer.json"


def _all_added_tokens_special(data: dict) -> HFTokenizer:
    """From a tokenizer's JSON: a copy in which every added token is special, so that with
    `encode_special_tokens` on none of them is matched in text; vocabulary and pipeline stay."""
    data = {**data, "added_tokens": [{**added, "special": True} for added in data.get("added_tokens") or ()]}
    plain = HFTokenizer.from_str(json.dumps(data))
    plain.encode_special_tokens = True
    return plain


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, source: str = "") -> None:
        self.source = source
        self._tokenizer = tokenizer  # decoding, and the added tokens as the checkpoint declares them
        data = json.loads(tokenizer.to_str())
        self._plain = _all_added_tokens_special(data)
        self._decoder: dict = data.get("decoder") or {}
        added = tokenizer.get_added_tokens_decoder()
        # Every added token by its text: chat formats match them in template text (never in client text).
        self.added_tokens: Mapping[str, int] = {token.content: token_id for token_id, token in added.items()}
        # Special tokens: skipped when decoding, never produced by client text nor by a grammar.
        self.control_ids: frozenset[int] = frozenset(i for i, token in added.items() if token.special)
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_json(cls, text: str, source: str = "") -> Self:
        return cls(HFTokenizer.from_str(text), source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Self:
        """From a tokenizer.json file, a directory holding one, or (None) the bundled asset."""
        file = BUNDLED_TOKENIZER_PATH if path is None else Path(path)
        if file.is_dir():
            file = file / TOKENIZER_FILENAME
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        return cls(HFTokenizer.from_file(str(file)), source=str(file))

    def encode_text(self, text: str) -> list[int]:
        """Plain text to ids; never yields an added token (see the module docstring)."""
        if not text:
            return []
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """A plain completion's prompt, as the checkpoint's tokenizer encodes it by default: its
        added tokens recognized (the caller writes the whole prompt) and its own special tokens
        (a BOS, for tokenizers that add one) added."""
        return self._tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def vocab(self) -> dict[str, int]:
        """Every token's id by its encoded form (byte-level BPE: `Ġ` stands for a space)."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def is_control(self, token_id: int) -> bool:
        return token_id in self.control_ids

    @property
    def vocab_type(self) -> str:
        """How tokens spell text, from the decoder: "byte_level" (GPT-2's byte-to-unicode alphabet,
        `Ġ` for a space), "byte_fallback" (sentencepiece with `<0x..>` byte tokens) or "raw"."""
        decoders = self._decoder.get("decoders") or [self._decoder]
        types = {d.get("type") for d in decoders}
        return "byte_level" if "ByteLevel" in types else "byte_fallback" if "ByteFallback" in types else "raw"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, vocab_size={self.vocab_size})"


class MuseTokenizer(Tokenizer):
    """The Muse format's tokenizer: its control tokens are required, and named by attribute."""

    def __init__(self, tokenizer: HFTokenizer, source: str = "") -> None:
        super().__init__(tokenizer, source)
        missing = [t for t in st.CONTROL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer {source or '<in memory>'} lacks control tokens {missing}")
        self._control_ids: dict[str, int] = {t: tokenizer.token_to_id(t) for t in st.CONTROL_TOKENS}
        self.pad_id = self._control_ids[st.PAD]
        self.bos_id = self._control_ids[st.BOS]
        self.eos_id = self._control_ids[st.EOS]
        self.system_id = self._control_ids[st.SYSTEM]
        self.user_id = self._control_ids[st.USER]
        self.assistant_id = self._control_ids[st.ASSISTANT]
        self.tool_id = self._control_ids[st.TOOL]
        self.end_id = self._control_ids[st.END]
        self.think_id = self._control_ids[st.THINK]
        self.think_end_id = self._control_ids[st.THINK_END]
        self.tool_call_id = self._control_ids[st.TOOL_CALL]
        self.tool_call_end_id = self._control_ids[st.TOOL_CALL_END]
        self.tools_id = self._control_ids[st.TOOLS]
        self.image_id = self._control_ids[st.IMAGE]
        self.audio_id = self._control_ids[st.AUDIO]

    @staticmethod
    def fits(tokenizer: Tokenizer) -> bool:
        """Whether a tokenizer holds every Muse control token (so it can serve the Muse format)."""
        return all(tokenizer.token_to_id(t) is not None for t in st.CONTROL_TOKENS)

    def token_id(self, special: str) -> int:
        try:
            return self._control_ids[special]
        except KeyError:
            raise KeyError(f"{special!r} is not a control token") from None
