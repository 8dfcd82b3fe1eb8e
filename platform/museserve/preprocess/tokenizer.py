"""`MuseTokenizer`: the byte-level BPE tokenizer with the platform's control tokens.

Control tokens enter a sequence only by id (see `chat_template`). `encode_text` treats its
input as plain text, so a user who types `<|end|>` gets the tokens for those seven
characters, never the control token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from museserve.preprocess import special_tokens as st

BUNDLED_TOKENIZER_PATH = Path(__file__).parent / "assets" / "muse-tokenizer.json"
TOKENIZER_FILENAME = "tokenizer.json"


class MuseTokenizer:
    def __init__(self, tokenizer: Tokenizer, source: str = "") -> None:
        self._tokenizer = tokenizer
        self.source = source
        # Special-token splitting off: added tokens typed in text are encoded as plain text.
        self._tokenizer.encode_special_tokens = True
        missing = [t for t in st.CONTROL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer {source or '<in memory>'} lacks control tokens {missing}")
        self._control_ids: dict[str, int] = {t: tokenizer.token_to_id(t) for t in st.CONTROL_TOKENS}
        self.control_ids: frozenset[int] = frozenset(self._control_ids.values())
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

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

    @classmethod
    def load(cls, path: str | None = None) -> MuseTokenizer:
        """Load from a tokenizer.json file, a directory holding one, or (None) the bundled asset."""
        file = BUNDLED_TOKENIZER_PATH if path is None else Path(path)
        if file.is_dir():
            file = file / TOKENIZER_FILENAME
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        return cls(Tokenizer.from_file(str(file)), source=str(file))

    def encode_text(self, text: str) -> list[int]:
        """Plain text to ids; never yields a control token."""
        if not text:
            return []
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not self.control_ids.isdisjoint(ids):
            raise RuntimeError("text encoding produced a control token")
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def vocab(self) -> dict[str, int]:
        """Every token's id by its encoded form (byte-level BPE: `Ġ` stands for a space)."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def token_id(self, special: str) -> int:
        try:
            return self._control_ids[special]
        except KeyError:
            raise KeyError(f"{special!r} is not a control token") from None

    def is_control(self, token_id: int) -> bool:
        return token_id in self.control_ids

    def __repr__(self) -> str:
        return f"MuseTokenizer(source={self.source!r}, vocab_size={self.vocab_size})"
