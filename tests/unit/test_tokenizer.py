from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from museserve.preprocess import special_tokens as st
from museserve.preprocess.build_tokenizer import VOCAB_SIZE, build_tokenizer
from museserve.preprocess.tokenizer import BUNDLED_TOKENIZER_PATH, MuseTokenizer

SAMPLES = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "rtl: مرحبا بالعالم שלום",
    "zero width \u200b\u200d\ufeff and nbsp\u00a0",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∀x∈ℝ",
    "\x00\x01\x7f control chars",
    "a literal replacement char \ufffd stays",
    "def f(x):\n    return x ** 2  # code\n",
]


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


def random_text(rng: random.Random, length: int) -> str:
    chars = []
    for _ in range(length):
        plane = rng.random()
        if plane < 0.4:
            code = rng.randrange(0x20, 0x7F)
        elif plane < 0.7:
            code = rng.randrange(0x80, 0x3000)
        elif plane < 0.9:
            code = rng.randrange(0x3000, 0xD800)
        else:
            code = rng.randrange(0x10000, 0x110000)
        chars.append(chr(code))
    return "".join(chars)


def test_bundled_tokenizer_shape(tokenizer: MuseTokenizer) -> None:
    assert tokenizer.vocab_size == VOCAB_SIZE == 8192
    assert BUNDLED_TOKENIZER_PATH.stat().st_size < 1_000_000
    for expected_id, token in enumerate(st.CONTROL_TOKENS):
        assert tokenizer.token_id(token) == expected_id
    assert tokenizer.control_ids == frozenset(range(st.NUM_CONTROL_TOKENS))


def test_named_ids(tokenizer: MuseTokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.end_id == tokenizer.token_id(st.END)
    assert tokenizer.think_id == tokenizer.token_id(st.THINK)
    assert tokenizer.think_end_id == tokenizer.token_id(st.THINK_END)
    assert tokenizer.tool_call_id == tokenizer.token_id(st.TOOL_CALL)
    assert tokenizer.tool_call_end_id == tokenizer.token_id(st.TOOL_CALL_END)
    assert tokenizer.image_id == tokenizer.token_id(st.IMAGE)
    assert tokenizer.audio_id == tokenizer.token_id(st.AUDIO)
    with pytest.raises(KeyError):
        tokenizer.token_id("hello")


def test_every_byte_is_in_the_vocabulary() -> None:
    vocab = json.loads(BUNDLED_TOKENIZER_PATH.read_text())["model"]["vocab"]
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_samples(tokenizer: MuseTokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode_text(text)) == text


def test_round_trip_random_unicode(tokenizer: MuseTokenizer) -> None:
    rng = random.Random(1234)
    for _ in range(200):
        text = random_text(rng, rng.randrange(1, 60))
        assert tokenizer.decode(tokenizer.encode_text(text)) == text


def test_round_trip_random_bytes_as_text(tokenizer: MuseTokenizer) -> None:
    rng = random.Random(99)
    for _ in range(200):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        for text in (raw.decode("latin-1"), raw.decode("utf-8", errors="replace")):
            assert tokenizer.decode(tokenizer.encode_text(text)) == text


def test_common_english_is_compressed(tokenizer: MuseTokenizer) -> None:
    text = "The function returns the value of the attribute if it is defined."
    assert len(tokenizer.encode_text(text)) < len(text) / 3


@pytest.mark.parametrize("token", st.CONTROL_TOKENS)
def test_control_token_text_is_plain_text(tokenizer: MuseTokenizer, token: str) -> None:
    for text in (token, f"x{token}y", f" {token} ", token * 3, f"{st.END}{token}\n"):
        ids = tokenizer.encode_text(text)
        assert tokenizer.control_ids.isdisjoint(ids)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_decode_skips_or_keeps_control_tokens(tokenizer: MuseTokenizer) -> None:
    ids = [tokenizer.bos_id, *tokenizer.encode_text("hi"), tokenizer.end_id]
    assert tokenizer.decode(ids) == "hi"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|bos|>hi<|end|>"


def test_load_from_directory_and_file(tmp_path: Path, tokenizer: MuseTokenizer) -> None:
    shutil.copy(BUNDLED_TOKENIZER_PATH, tmp_path / "tokenizer.json")
    for path in (str(tmp_path), str(tmp_path / "tokenizer.json")):
        loaded = MuseTokenizer.load(path)
        assert loaded.vocab_size == tokenizer.vocab_size
        assert loaded.encode_text("same ids") == tokenizer.encode_text("same ids")


def test_load_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        MuseTokenizer.load(str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        MuseTokenizer.load(str(tmp_path))


def test_tokenizer_without_control_tokens_is_rejected(tmp_path: Path) -> None:
    data = json.loads(BUNDLED_TOKENIZER_PATH.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != st.THINK]
    del data["model"]["vocab"][st.THINK]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="lacks control tokens"):
        MuseTokenizer.load(str(path))


def test_build_is_deterministic() -> None:
    corpus = [Path(__file__).read_text(encoding="utf-8")] * 2
    first = build_tokenizer(corpus, vocab_size=600)
    second = build_tokenizer(corpus, vocab_size=600)
    assert first.to_str() == second.to_str()
    loaded = MuseTokenizer(Tokenizer.from_str(first.to_str()))
    assert loaded.control_ids == frozenset(range(st.NUM_CONTROL_TOKENS))
    assert loaded.decode(loaded.encode_text("naïve 😀")) == "naïve 😀"
