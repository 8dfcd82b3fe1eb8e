"""Rendering a checkpoint's Jinja chat template while knowing which characters the client wrote.

The template is untrusted code: it runs in Jinja's immutable sandbox, with the globals and
filters transformers gives chat templates (`raise_exception`, `strftime_now`, a `tojson`
that keeps non-ASCII text), and `trim_blocks`/`lstrip_blocks` as transformers sets them,
so a template renders here what it renders there.

Client text enters the template as `ClientText`: a `str` whose value is a sentinel,
`\\ue000<nonce><index>\\ue001` (private-use characters and a per-render random nonce, so no
client string can forge one), while string methods a template calls on it (`strip`,
`split`, `startswith`, `in`, `length`, `==`, ...) act on the real text and wrap what they
return. Concatenation keeps the sentinel. The rendered output is then a mix of template
characters and sentinels, and `RenderedText.runs` gives it back as (text, from_client)
runs with the real text in place of each sentinel: the chat format matches control tokens
in the template's runs only.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from jinja2 import Template
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HOLE = -1  # a sentinel index that marks where `render_split` cuts, not client text


class ClientTexts:
    """The client strings of one render, each behind its sentinel."""

    def __init__(self) -> None:
        self._nonce = "".join(str(secrets.randbelow(10)) for _ in range(12))
        self._texts: list[str] = []
        self.pattern = re.compile("\ue000" + self._nonce + r"(-?\d+)" + "\ue001")

    def wrap(self, text: str) -> ClientText:
        self._texts.append(text)
        return ClientText(self, len(self._texts) - 1, text)

    def sentinel(self, index: int) -> str:
        return f"\ue000{self._nonce}{index}\ue001"

    def text(self, index: int) -> str:
        return self._texts[index]

    def deep_wrap(self, value: Any) -> Any:
        """Client JSON (schemas, arguments): every string wrapped, keys included."""
        if isinstance(value, str):
            return self.wrap(value)
        if isinstance(value, dict):
            return {self.wrap(k): self.deep_wrap(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep_wrap(v) for v in value]
        return value

    def runs(self, rendered: str) -> Iterator[tuple[str, bool | None]]:
        """(text, from_client) runs of a render; a hole comes as ("", None)."""
        position = 0
        for match in self.pattern.finditer(rendered):
            if match.start() > position:
                yield rendered[position : match.start()], False
            index = int(match.group(1))
            yield ("", None) if index == HOLE else (self._texts[index], True)
            position = match.end()
        if position < len(rendered):
            yield rendered[position:], False


class ClientText(str):
    """A client string inside a template: its value is its sentinel; see the module docstring."""

    def __new__(cls, texts: ClientTexts, index: int, real: str) -> ClientText:
        obj = super().__new__(cls, texts.sentinel(index))
        obj._texts, obj._real = texts, real
        return obj

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._texts.wrap(value)
        if isinstance(value, list | tuple):
            return [self._wrap(v) for v in value]
        return value

    def __len__(self) -> int:
        return len(self._real)

    def __eq__(self, other: object) -> bool:
        return self._real == (other._real if isinstance(other, ClientText) else other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._real)

    def __contains__(self, item: object) -> bool:
        return str(item._real if isinstance(item, ClientText) else item) in self._real

    def __getitem__(self, key: Any) -> Any:
        return self._wrap(self._real[key])


def _delegating(name: str) -> Any:
    def method(self: ClientText, *args: Any, **kwargs: Any) -> Any:
        args = tuple(a._real if isinstance(a, ClientText) else a for a in args)
        return self._wrap(getattr(self._real, name)(*args, **kwargs))

    method.__name__ = name
    return method


for _name in (
    "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "partition", "rpartition", "replace",
    "lower", "upper", "title", "capitalize", "removeprefix", "removesuffix",
    "startswith", "endswith", "find", "rfind", "index", "rindex", "count", "isspace", "isdigit",
):  # fmt: skip
    setattr(ClientText, _name, _delegating(_name))


def _unwrap(value: Any) -> Any:
    if isinstance(value, ClientText):
        return value._real
    if isinstance(value, dict):
        return {_unwrap(k): _unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unwrap(v) for v in value]
    return value


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False):
    """transformers' `tojson`; what it writes holds client text, so it is client text itself."""
    text = json.dumps(
        _unwrap(value), ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    texts = _texts_in(value)
    return texts.wrap(text) if texts is not None else text


def _texts_in(value: Any) -> ClientTexts | None:
    if isinstance(value, ClientText):
        return value._texts
    items = value.items() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    for item in items:
        found = _texts_in(item)
        if found is not None:
            return found
    return None


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(str(_unwrap(message)))


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> Template:
    """The template in a sandbox; compiled once per distinct source."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)
