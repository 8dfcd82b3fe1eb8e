"""Build the bundled byte-level BPE tokenizer.

    python -m museserve.preprocess.build_tokenizer OUT.json

The corpus is the source text of a fixed list of standard-library files, so the build needs
no network. `pydoc_data/topics.py` holds the Python reference documentation and supplies
most of the English prose; the modules supply code. For a given CPython version the output
is byte-for-byte reproducible; the committed asset was built with CPython 3.11.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from museserve.preprocess.special_tokens import CONTROL_TOKENS

VOCAB_SIZE = 8192
MIN_PAIR_FREQUENCY = 2
MAX_TOKEN_CHARS = 16

CORPUS_FILES: tuple[str, ...] = (
    "pydoc_data/topics.py",
    "argparse.py",
    "calendar.py",
    "collections/__init__.py",
    "dataclasses.py",
    "difflib.py",
    "email/message.py",
    "functools.py",
    "http/client.py",
    "inspect.py",
    "json/__init__.py",
    "logging/__init__.py",
    "pathlib.py",
    "string.py",
    "subprocess.py",
    "textwrap.py",
    "typing.py",
    "unittest/case.py",
    "urllib/parse.py",
)


def read_corpus(stdlib_dir: Path) -> list[str]:
    documents = []
    for relative in CORPUS_FILES:
        path = stdlib_dir / relative
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} is missing from this Python install")
        documents.append(path.read_text(encoding="utf-8"))
    return documents


def build_tokenizer(documents: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = None
    # No prefix space and no regex-free mode: decode(encode(text)) == text for every string.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = None
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_PAIR_FREQUENCY,
        special_tokens=list(CONTROL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=MAX_TOKEN_CHARS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"trained vocabulary has {tokenizer.get_vocab_size()} tokens, expected {vocab_size}:"
            " the corpus is too small"
        )
    for expected_id, token in enumerate(CONTROL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            raise RuntimeError(f"control token {token} did not get id {expected_id}")
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write tokenizer.json")
    args = parser.parse_args(argv)
    documents = read_corpus(Path(sysconfig.get_paths()["stdlib"]))
    tokenizer = build_tokenizer(documents)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(tokenizer.to_str(pretty=False) + "\n", encoding="utf-8")
    size_kib = args.out.stat().st_size / 1024
    print(f"wrote {args.out}: {tokenizer.get_vocab_size()} tokens, {size_kib:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
