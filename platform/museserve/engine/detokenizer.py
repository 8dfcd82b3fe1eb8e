"""Streaming detokenization: generated token ids to text deltas, with stop strings.

Two stages run on every push:

1. Decoding. Only a small window of ids is decoded: the ids not yet turned into text, plus
   the one before them as context (for decoders whose output depends on the previous
   token); the text of the context is cut off the front. While the window's text ends in
   U+FFFD its last bytes may be an unfinished UTF-8 character, so nothing is released until
   a later token completes it. The cost of a push is proportional to the window, not to the
   length of the output.
2. Stop strings. Released text that could be the beginning of a stop string is held back
   until it is known not to be; when a stop string completes, the text before it is the last
   delta and the stop string itself is never emitted.
"""

from __future__ import annotations

from collections.abc import Sequence

from museserve.preprocess.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids_tail: Sequence[int] = (),
        stop: tuple[str, ...] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        # Invariant: the text of every id before `_read` has been released to the stop-string
        # stage and ends on a character boundary; only the last of them is kept, as context.
        self._ids: list[int] = list(prompt_ids_tail[-1:])
        self._read = len(self._ids)
        self._stops: tuple[str, ...] = tuple(s for s in stop if s)
        self._stop_prefixes: frozenset[str] = frozenset(s[:n] for s in self._stops for n in range(1, len(s)))
        self._longest_stop_prefix = max((len(s) - 1 for s in self._stops), default=0)
        self._held = ""  # released text that may begin a stop string; never holds a whole one
        self._flushed = False
        self.stopped = False
        self.stop_string: str | None = None  # the stop string that ended the text, if any

    def push(self, token_ids: Sequence[int]) -> str:
        """The text newly known to be final after these tokens; "" once stopped."""
        if self.stopped or self._flushed or len(token_ids) == 0:
            return ""
        self._ids.extend(token_ids)
        return self._apply_stops(self._release(final=False), final=False)

    def flush(self) -> str:
        """Everything still held back, at the end of generation; "" if a stop string ended it.

        An unfinished UTF-8 character at the very end decodes to U+FFFD, as in a full decode.
        """
        if self.stopped or self._flushed:
            return ""
        text = self._apply_stops(self._release(final=True), final=True)
        self._flushed = True
        return text

    def _release(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        start = self._read - 1 if self._read > 0 else 0
        context = self._tokenizer.decode(self._ids[start : self._read], self._skip_special)
        window = self._tokenizer.decode(self._ids[start:], self._skip_special)
        if not final and window.endswith(REPLACEMENT_CHAR):
            return ""
        del self._ids[: len(self._ids) - 1]
        self._read = len(self._ids)
        return window[len(context) :]

    def _apply_stops(self, text: str, final: bool) -> str:
        if not self._stops:
            return text
        pending = self._held + text
        match = self._earliest_stop(pending)
        if match is not None:
            start, stop = match
            self.stopped = True
            self.stop_string = stop
            self._held = ""
            return pending[:start]
        keep = 0 if final else self._stop_prefix_suffix_len(pending)
        cut = len(pending) - keep
        self._held = pending[cut:]
        return pending[:cut]

    def _earliest_stop(self, text: str) -> tuple[int, str] | None:
        """The stop string that completes first in `text` (the longest, among ties)."""
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            start = text.find(stop)
            if start < 0:
                continue
            key = (start + len(stop), start, stop)
            if best is None or key < best:
                best = key
        return None if best is None else (best[1], best[2])

    def _stop_prefix_suffix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        for length in range(min(len(text), self._longest_stop_prefix), 0, -1):
            if text[-length:] in self._stop_prefixes:
                return length
        return 0
