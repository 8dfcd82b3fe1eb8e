from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from museserve.engine.detokenizer import IncrementalDetokenizer
from museserve.preprocess.tokenizer import MuseTokenizer

UNICODE_TEXT = "Grüße, 世界! 😀👍🏽 e\u0301 한국어 🇫🇷 done"


@pytest.fixture(scope="module")
def tok() -> MuseTokenizer:
    return MuseTokenizer.load(None)


def chunks(ids: Sequence[int], rng: random.Random | None, max_size: int = 4) -> list[list[int]]:
    if rng is None:
        return [[i] for i in ids]
    out, pos = [], 0
    while pos < len(ids):
        size = rng.randint(1, max_size)
        out.append(list(ids[pos : pos + size]))
        pos += size
    return out


def stream(
    tok: MuseTokenizer,
    ids: Sequence[int],
    stop: tuple[str, ...] = (),
    rng: random.Random | None = None,
) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tok, stop=stop)
    deltas = [detok.push(chunk) for chunk in chunks(ids, rng)]
    deltas.append(detok.flush())
    return deltas, detok


def expected_with_stops(text: str, stops: tuple[str, ...]) -> str:
    hits = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    return text[: min(hits)[1]] if hits else text


def test_unicode_text_streams_without_replacement_chars(tok: MuseTokenizer) -> None:
    ids = tok.encode_text(UNICODE_TEXT)
    deltas, _ = stream(tok, ids)
    assert "".join(deltas) == UNICODE_TEXT
    assert all("\ufffd" not in d for d in deltas)


def test_split_character_is_held_until_complete(tok: MuseTokenizer) -> None:
    ids = tok.encode_text("😀")
    assert len(ids) > 1  # the emoji's four bytes span several tokens
    detok = IncrementalDetokenizer(tok)
    assert [detok.push([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.push(ids[-1:]) == "😀"


def test_control_tokens_are_skipped(tok: MuseTokenizer) -> None:
    ids = [*tok.encode_text("a"), tok.end_id, tok.think_id, *tok.encode_text("b"), tok.eos_id]
    deltas, _ = stream(tok, ids)
    assert "".join(deltas) == "ab"


def test_control_token_inside_a_split_character(tok: MuseTokenizer) -> None:
    emoji = tok.encode_text("😀")
    ids = [*emoji[:1], tok.think_end_id, *emoji[1:]]
    deltas, _ = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids) == "😀"


@pytest.mark.parametrize("seed", range(8))
def test_random_token_sequences_match_full_decode(tok: MuseTokenizer, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        full = tok.decode(ids)
        for chunking in (None, rng):
            deltas, _ = stream(tok, ids, rng=chunking)
            assert "".join(deltas) == full


@pytest.mark.parametrize("seed", range(4))
def test_random_unicode_streams_exactly(tok: MuseTokenizer, seed: int) -> None:
    rng = random.Random(100 + seed)
    alphabet = "ab 世界😀é\u0301\n"
    for _ in range(25):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
        deltas, _ = stream(tok, tok.encode_text(text), rng=rng)
        assert "".join(deltas) == text
        assert all("\ufffd" not in d for d in deltas)


def test_stop_string_spanning_several_tokens(tok: MuseTokenizer) -> None:
    stop = "the end of it"
    ids = tok.encode_text("Some words, and the end of it, then more words")
    assert len(tok.encode_text(stop)) > 1
    deltas, detok = stream(tok, ids, stop=(stop,))
    assert "".join(deltas) == "Some words, and "
    assert detok.stopped and detok.stop_string == stop


def test_stop_at_the_very_start(tok: MuseTokenizer) -> None:
    deltas, detok = stream(tok, tok.encode_text("STOP and then text"), stop=("STOP",))
    assert deltas == [""] * len(deltas)
    assert detok.stopped


def test_text_after_a_stop_is_never_emitted(tok: MuseTokenizer) -> None:
    detok = IncrementalDetokenizer(tok, stop=("##",))
    emitted = detok.push(tok.encode_text("keep ## drop"))
    assert emitted == "keep " and detok.stopped
    assert detok.push(tok.encode_text(" more text")) == ""
    assert detok.flush() == ""


def test_several_stop_strings_first_completed_wins(tok: MuseTokenizer) -> None:
    ids = tok.encode_text("alpha beta gamma delta")
    stops = ("gamma delta", "beta", "alpha beta gamma delta!")
    for chunking in (None, random.Random(3)):
        deltas, detok = stream(tok, ids, stop=stops, rng=chunking)
        assert "".join(deltas) == "alpha "
        assert detok.stop_string == "beta"


def test_overlapping_stops_with_equal_ends_prefer_the_longest(tok: MuseTokenizer) -> None:
    deltas, detok = stream(tok, tok.encode_text("xx abc yy"), stop=("bc", "abc"))
    assert "".join(deltas) == "xx "
    assert detok.stop_string == "abc"


def test_possible_stop_prefix_is_held_then_released(tok: MuseTokenizer) -> None:
    detok = IncrementalDetokenizer(tok, stop=("STOP",))
    assert detok.push(tok.encode_text("go ST")) == "go "
    assert detok.push(tok.encode_text("OW")) == "STOW"
    assert detok.push(tok.encode_text(" ST")) == " "
    assert detok.flush() == "ST"
    assert not detok.stopped
    assert detok.flush() == ""


def test_stop_string_with_split_characters(tok: MuseTokenizer) -> None:
    deltas, detok = stream(tok, tok.encode_text("你好😀世界再见"), stop=("😀世",))
    assert "".join(deltas) == "你好"
    assert detok.stopped
    assert all("\ufffd" not in d for d in deltas)


def test_empty_stop_strings_are_ignored(tok: MuseTokenizer) -> None:
    deltas, detok = stream(tok, tok.encode_text("hello"), stop=("",))
    assert "".join(deltas) == "hello" and not detok.stopped


@pytest.mark.parametrize("seed", range(6))
def test_random_stops_match_reference(tok: MuseTokenizer, seed: int) -> None:
    rng = random.Random(500 + seed)
    for _ in range(40):
        text = "".join(rng.choice("abc 世") for _ in range(rng.randrange(1, 40)))
        stops = tuple("".join(rng.choice("abc世") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3)))
        deltas, detok = stream(tok, tok.encode_text(text), stop=stops, rng=rng)
        expected = expected_with_stops(text, stops)
        assert "".join(deltas) == expected
        assert detok.stopped == any(s in text for s in stops)


def test_prompt_tail_does_not_change_the_output(tok: MuseTokenizer) -> None:
    prompt = [tok.user_id, *tok.encode_text("question"), tok.end_id, tok.assistant_id]
    ids = tok.encode_text(UNICODE_TEXT)
    detok = IncrementalDetokenizer(tok, prompt_ids_tail=prompt)
    assert "".join(detok.push([i]) for i in ids) + detok.flush() == UNICODE_TEXT


class CountingTokenizer(MuseTokenizer):
    longest_decode = 0

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self.longest_decode = max(self.longest_decode, len(ids))
        return super().decode(ids, skip_special_tokens)


def test_work_per_push_does_not_grow_with_output(tok: MuseTokenizer) -> None:
    counting = CountingTokenizer.load(None)
    ids = tok.encode_text(UNICODE_TEXT * 200)
    detok = IncrementalDetokenizer(counting, stop=("never appears",))
    text = "".join(detok.push([i]) for i in ids) + detok.flush()
    assert text == UNICODE_TEXT * 200
    assert counting.longest_decode <= 8
