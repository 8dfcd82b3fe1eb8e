"""JSON numbers as xgrammar writes them, character by character, and the shortest text that ends one.

Unbounded, xgrammar writes an integer as `-?(0|[1-9][0-9]*)` and a number as that followed by
`(\\.[0-9]+)?([eE][+-]?[0-9]+)?`. With `minimum`/`maximum`/`exclusive*` it writes no exponent and at
most six fraction digits, and the completion here writes a minus sign only before a value below
zero (xgrammar never admits `-0`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

MAX_FRACTION_DIGITS = 6  # what xgrammar 0.2.8 admits after the point of a bounded number


class NumberState(enum.IntEnum):
    START = 0
    MINUS = 1
    ZERO = 2  # the integer part is "0"
    INT = 3  # the integer part starts with 1-9
    DOT = 4
    FRACTION = 5
    E = 6
    EXPONENT_SIGN = 7
    EXPONENT = 8


ENDS = frozenset({NumberState.ZERO, NumberState.INT, NumberState.FRACTION, NumberState.EXPONENT})
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class NumberBounds:
    """An interval of admitted values; None: unbounded on that side."""

    low: Fraction | None = None
    high: Fraction | None = None
    low_exclusive: bool = False
    high_exclusive: bool = False


def next_state(state: NumberState, c: str, integer: bool, bounded: bool) -> NumberState | None:
    """The syntax state after `c`, or None when `c` does not continue the number."""
    S = NumberState
    digit = c in _DIGITS
    if state in (S.START, S.MINUS):
        if c == "-" and state is S.START:
            return S.MINUS
        if c == "0":
            return None if state is S.MINUS and integer else S.ZERO
        return S.INT if digit else None
    if state in (S.INT, S.ZERO):
        if digit and state is S.INT:
            return S.INT
        if c == "." and not integer:
            return S.DOT
        return S.E if c in "eE" and not integer and not bounded else None
    if state in (S.DOT, S.FRACTION):
        if digit:
            return S.FRACTION
        return S.E if c in "eE" and state is S.FRACTION and not bounded else None
    if state is S.E and c in "+-":
        return S.EXPONENT_SIGN
    return S.EXPONENT if digit else None


def unbounded_completion(state: NumberState, integer: bool) -> str:
    if state in ENDS:
        return ""
    return "1" if state is NumberState.MINUS and integer else "0"


def bounded_completion(text: str, integer: bool, bounds: NumberBounds) -> str | None:
    """The shortest text that makes `text` (a prefix of a bounded number) a number within `bounds`,
    or None if none does. Tries each added length in turn; a handful of intervals each."""
    if not text:  # the sign is still open
        unsigned = _completion("", integer, bounds)
        negative = _completion("-", integer, bounds)
        options = [c for c in (unsigned, None if negative is None else "-" + negative) if c is not None]
        return min(options, key=len) if options else None
    return _completion(text, integer, bounds)


def _completion(text: str, integer: bool, bounds: NumberBounds) -> str | None:
    negative = text.startswith("-")
    int_part, dot, fraction = text[negative:].partition(".")
    max_fraction = 0 if integer else MAX_FRACTION_DIGITS
    if len(fraction) > max_fraction:
        return None
    limit = 8 + max(_int_digits(bounds.low), _int_digits(bounds.high), len(int_part))
    for added in range(limit + 1):
        for int_low, int_high, fraction_digits in _layouts(int_part, bool(dot), len(fraction), added):
            if fraction_digits > max_fraction:
                continue
            free = fraction_digits - len(fraction)
            scale = 10**fraction_digits
            fraction_base = int(fraction or "0") * 10**free
            lowest = int_low * scale + fraction_base
            highest = int_high * scale + fraction_base + 10**free - 1
            n = _smallest_admitted(lowest, highest, scale, negative, bounds)
            if n is not None:
                whole = ("-" if negative else "") + str(n // scale)
                if fraction_digits:
                    whole += "." + str(n % scale).zfill(fraction_digits)
                return whole[len(text) :]
    return None


def _layouts(int_part: str, dot: bool, typed_fraction: int, added: int) -> Iterator[tuple[int, int, int]]:
    """(lowest, highest integer part, fraction digits) of each way to add `added` characters to a
    number typed up to its point; fraction digits 0 means no point."""
    if dot:
        if typed_fraction + added >= 1:
            value = int(int_part)
            yield value, value, typed_fraction + added
        return
    for extra_int in range(added + 1):
        rest = added - extra_int  # 0: no fraction; else the point and rest-1 digits
        if rest == 1:
            continue
        fraction_digits = rest - 1 if rest else 0
        if not int_part:
            if extra_int == 1:
                yield 0, 0, fraction_digits
            if extra_int >= 1:
                yield 10 ** (extra_int - 1), 10**extra_int - 1, fraction_digits
        elif int_part == "0":
            if extra_int == 0:
                yield 0, 0, fraction_digits
        else:
            base = int(int_part) * 10**extra_int
            yield base, base + 10**extra_int - 1, fraction_digits


def _smallest_admitted(lowest: int, highest: int, scale: int, negative: bool, b: NumberBounds) -> int | None:
    """The smallest magnitude n in [lowest, highest] with sign * n / scale inside the bounds."""
    low, high = lowest, highest
    if negative:  # value = -n/scale: low bound caps n, high bound floors it; never -0
        low = max(low, 1)
        if b.low is not None:
            cap = -b.low * scale
            high = min(high, _ceil(cap) - 1 if b.low_exclusive else _floor(cap))
        if b.high is not None:
            floor = -b.high * scale
            low = max(low, _floor(floor) + 1 if b.high_exclusive else _ceil(floor))
    else:
        if b.low is not None:
            floor = b.low * scale
            low = max(low, _floor(floor) + 1 if b.low_exclusive else _ceil(floor))
        if b.high is not None:
            cap = b.high * scale
            high = min(high, _ceil(cap) - 1 if b.high_exclusive else _floor(cap))
    return low if low <= high else None


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def _ceil(x: Fraction) -> int:
    return -(-x.numerator // x.denominator)


def _int_digits(bound: Fraction | None) -> int:
    return 0 if bound is None else len(str(abs(_floor(bound))))
