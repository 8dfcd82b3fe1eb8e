"""Grammars for constrained decoding, compiled with xgrammar against the serving tokenizer.

Three kinds of grammar:

- a tool call's JSON, `{"name": "<tool>", "arguments": <object valid for that tool's schema>}`,
  one alternative per tool; each tool's schema is converted on its own, so its `$ref`s
  resolve against itself;
- the same framed by text markers (`<tool_call>\n ... \n</tool_call>`), for chat formats
  whose calls are text (`framed_tool_call`);
- an answer's JSON (`response_format`): valid for a schema, or any object.

Every special token is special to xgrammar (its text is empty), so no grammar admits one
except the stop tokens a matcher is given. Output is compact (`any_whitespace=False`):
random and weak models would otherwise fill the answer with whitespace.

Compiling takes milliseconds per schema; compiled grammars are kept in an LRU keyed by the
schema text, so a schema repeated across requests compiles once per replica.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from museserve.domain import ToolSpec
from museserve.errors import InvalidArgument
from museserve.preprocess.tokenizer import Tokenizer

if TYPE_CHECKING:
    import xgrammar as xgr

DEFAULT_CACHE_SIZE = 256
ANY_OBJECT_SCHEMA = '{"type": "object"}'


def tokenizer_info(tokenizer: Tokenizer, vocab_size: int, stop_ids: Iterable[int]) -> xgr.TokenizerInfo:
    """The vocabulary as xgrammar sees it; special tokens get empty text."""
    import xgrammar as xgr

    encoded = [""] * vocab_size
    for token, token_id in tokenizer.vocab().items():
        if token_id < vocab_size and not tokenizer.is_control(token_id):
            encoded[token_id] = token
    vocab_type = {"byte_level": xgr.VocabType.BYTE_LEVEL, "byte_fallback": xgr.VocabType.BYTE_FALLBACK}
    return xgr.TokenizerInfo(
        encoded,
        vocab_type.get(tokenizer.vocab_type, xgr.VocabType.RAW),
        vocab_size=vocab_size,
        stop_token_ids=sorted(stop_ids),
    )


class GrammarCache:
    """Compiles and caches grammars; safe to call from several threads."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop_ids: Iterable[int],
        vocab_size: int | None = None,
        capacity: int = DEFAULT_CACHE_SIZE,
    ):
        import xgrammar as xgr

        self.vocab_size = vocab_size or tokenizer.vocab_size
        # One compile thread: more take CPU from the model and the step loop (measured: a 32-property
        # schema compiled with 8 threads on 2 cores held the loop up 28 ms, with 1 thread 5 ms).
        info = tokenizer_info(tokenizer, self.vocab_size, stop_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self._capacity = capacity
        self._cache: OrderedDict[tuple, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0  # cache misses, for tests and metrics

    def tool_calls(self, tools: Sequence[ToolSpec], where: Sequence[str]) -> xgr.CompiledGrammar:
        """The JSON of one call to any of `tools`; `where[i]` names tool i's schema field in errors."""
        key = ("tools", tuple((t.name, t.parameters_json_schema) for t in tools))
        return self._get(key, lambda: self._tool_calls_grammar(tools, where))

    def framed_tool_call(
        self, tools: Sequence[ToolSpec], where: Sequence[str], frame: tuple[str, str]
    ) -> xgr.CompiledGrammar:
        """One call, `<open>\n{"name": ..., "arguments": ...}\n<close>`, to any of `tools`."""
        import xgrammar as xgr

        def build() -> xgr.Grammar:
            head, tail = (
                xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text)}") for text in (frame[0] + "\n", "\n" + frame[1])
            )
            return xgr.Grammar.concat(head, self._tool_calls_grammar(tools, where), tail)

        key = ("framed", frame, tuple((t.name, t.parameters_json_schema) for t in tools))
        return self._get(key, build)

    def json(self, schema: str | None, strict: bool = True) -> xgr.CompiledGrammar:
        """An answer valid for `schema` (a JSON Schema text); None: any JSON object."""
        key = ("json", schema or ANY_OBJECT_SCHEMA, strict)
        return self._get(
            key, lambda: _schema_grammar(schema or ANY_OBJECT_SCHEMA, strict, "response_format.json_schema")
        )

    def _get(self, key: tuple, build: Callable[[], xgr.Grammar]) -> xgr.CompiledGrammar:
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
        compiled = self._compiler.compile_grammar(build())  # outside the lock: compiles may overlap
        with self._lock:
            self.compiles += 1
            self._cache[key] = compiled
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return compiled

    @staticmethod
    def _tool_calls_grammar(tools: Sequence[ToolSpec], where: Sequence[str]) -> xgr.Grammar:
        import xgrammar as xgr

        alternatives = []
        for tool, field in zip(tools, where, strict=True):
            schema = json.loads(tool.parameters_json_schema or "{}")
            arguments = _schema_grammar(json.dumps({"type": "object", **schema}), True, field)
            # Tool names are [A-Za-z0-9_-]+ (checked at the gateway): nothing to escape.
            head = xgr.Grammar.from_ebnf(f'root ::= "{{\\"name\\": \\"{tool.name}\\", \\"arguments\\": "')
            alternatives.append(xgr.Grammar.concat(head, arguments, xgr.Grammar.from_ebnf('root ::= "}"')))
        return alternatives[0] if len(alternatives) == 1 else xgr.Grammar.union(*alternatives)


# xgrammar 0.2.8 writes a string with minLength/maxLength as a repeat of this class, which admits
# raw control characters (JSON allows them only escaped); the rewrite narrows it to legal ones.
_LOOSE_STRING_CHAR = r"[^\"\\\r\n]"
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\]"


def _schema_grammar(schema: str, strict: bool, field: str) -> xgr.Grammar:
    import xgrammar as xgr

    try:
        grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=strict)
    except Exception as e:  # xgrammar raises RuntimeError or its own errors for unsupported schemas
        lines = str(e).strip().splitlines() or [type(e).__name__]
        first_line = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", lines[0])  # drop "[time] file.cc:83: "
        raise InvalidArgument(f"schema not supported for constrained decoding: {first_line}", field=field) from None
    ebnf = str(grammar)
    if _LOOSE_STRING_CHAR in ebnf:
        grammar = xgr.Grammar.from_ebnf(ebnf.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR))
    return grammar
