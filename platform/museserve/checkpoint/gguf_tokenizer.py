"""The `tokenizers` tokenizer a GGUF file describes, built from its `tokenizer.ggml.*` metadata.

A GGUF carries no tokenizer.json: it stores the vocabulary, the merges, each token's type and the
name of a pre-tokenizer (`tokenizer.ggml.pre`), which llama.cpp turns into a list of split regexes.
This module builds the same tokenizer: byte-level BPE over the file's vocabulary (ids are the
file's), the split llama.cpp applies for that pre-tokenizer name, a byte-level decoder and no
post-processor (no BOS is added: chat templates write their own markers).

Tokens the file marks CONTROL become special added tokens and USER_DEFINED ones plain added tokens,
so both are matched whole in the text, as llama.cpp does. Anything this module cannot reproduce
exactly (another `tokenizer.ggml.model`, an unknown pre-tokenizer) is a CheckpointError: a
tokenizer that splits text differently from the one the model was trained with degrades it silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from museserve.checkpoint.paths import CheckpointError

MODEL_KEY = "tokenizer.ggml.model"
PRE_KEY = "tokenizer.ggml.pre"
TOKENS_KEY = "tokenizer.ggml.tokens"
MERGES_KEY = "tokenizer.ggml.merges"
TOKEN_TYPE_KEY = "tokenizer.ggml.token_type"

# llama.cpp's split regexes (llama-vocab.cpp), applied one after the other; each keeps the text
# between its matches as pieces too, which is Split(..., behavior="isolated").
_LLAMA3_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# What llama.cpp uses for "default" (and for a file with no tokenizer.ggml.pre at all).
_DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]")


def _splits_then_bytes(*patterns: str) -> pre_tokenizers.PreTokenizer:
    splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in patterns]
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _gpt2() -> pre_tokenizers.PreTokenizer:
    # ByteLevel's own regex is GPT-2's; llama.cpp's copy lacks the final `|\s+`, which only
    # matches what the split would keep as a piece of its own anyway.
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm() -> pre_tokenizers.PreTokenizer:
    # llama.cpp: `\p{N}` then the GPT-2 regex; SmolLM2's own tokenizer.json says the same thing
    # as Digits(individual_digits=True) then ByteLevel, so every digit is a piece of its own.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


# tokenizer.ggml.pre -> the pre-tokenizer llama.cpp applies for it (names grouped as llama.cpp does).
PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "default": lambda: _splits_then_bytes(*_DEFAULT_SPLITS),
    "gpt-2": _gpt2,
    "gpt2": _gpt2,
    "smollm": _smollm,
    "llama3": lambda: _splits_then_bytes(_LLAMA3_SPLIT),
    "llama-v3": lambda: _splits_then_bytes(_LLAMA3_SPLIT),
    "llama-bpe": lambda: _splits_then_bytes(_LLAMA3_SPLIT),
    "qwen2": lambda: _splits_then_bytes(_QWEN2_SPLIT),
    "deepseek-r1-qwen": lambda: _splits_then_bytes(_QWEN2_SPLIT),
}
# llama.cpp looks a whole piece up in the vocabulary before merging for these (Llama 3's
# tokenizer.json says `ignore_merges: true`).
_IGNORE_MERGES = frozenset({"llama3", "llama-v3", "llama-bpe"})


def build_tokenizer(metadata: Mapping[str, Any], source: Path) -> Tokenizer:
    """The tokenizer `metadata` (a GGUF's key-value fields) describes; ids are the file's."""
    model = metadata.get(MODEL_KEY)
    if model != "gpt2":
        raise CheckpointError(f"{source}: {MODEL_KEY} {model!r} is not supported; supported: 'gpt2' (byte-level BPE)")
    pre = metadata.get(PRE_KEY, "default")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: {PRE_KEY} {pre!r} is not supported; supported: {', '.join(PRE_TOKENIZERS)}")
    tokens: list[str] = list(_required(metadata, TOKENS_KEY, source))
    token_types: list[int] = list(metadata.get(TOKEN_TYPE_KEY) or [gguf.TokenType.NORMAL] * len(tokens))
    if len(token_types) != len(tokens):
        raise CheckpointError(f"{source}: {TOKEN_TYPE_KEY} has {len(token_types)} entries for {len(tokens)} tokens")
    vocab: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        vocab.setdefault(token, token_id)  # a repeated spelling keeps its first id, as llama.cpp's lookup does
    bpe = models.BPE(
        vocab=vocab,
        merges=_merges(_required(metadata, MERGES_KEY, source), source),
        ignore_merges=pre in _IGNORE_MERGES,
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(_added(tokens, token_types, gguf.TokenType.CONTROL, special=True))
    tokenizer.add_tokens(_added(tokens, token_types, gguf.TokenType.USER_DEFINED, special=False))
    return tokenizer


def _required(metadata: Mapping[str, Any], key: str, source: Path) -> Any:
    if key not in metadata:
        raise CheckpointError(f"{source}: metadata key {key} is missing")
    return metadata[key]


def _merges(merges: list[str], source: Path) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, space, right = merge.partition(" ")
        if not space or not left or not right or " " in right:
            raise CheckpointError(f"{source}: {MERGES_KEY} entry {merge!r} is not two tokens separated by a space")
        pairs.append((left, right))
    return pairs


def _added(tokens: list[str], token_types: list[int], kind: gguf.TokenType, *, special: bool) -> list[AddedToken]:
    # normalized=False: matched against the raw text, as llama.cpp matches them.
    return [
        AddedToken(token, special=special, normalized=False)
        for token, token_type in zip(tokens, token_types, strict=True)
        if token_type == kind
    ]
