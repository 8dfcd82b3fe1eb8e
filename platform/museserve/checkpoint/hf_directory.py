"""A Hugging Face checkpoint directory's `CheckpointInfo`, read from its JSON and Jinja files.

Files: `config.json` (required), `tokenizer.json`, `tokenizer_config.json` (with
`special_tokens_map.json` as the older place for special tokens), `chat_template.jinja` (where
newer transformers releases save the template; it wins over tokenizer_config's) and
`generation_config.json`. Generation stops at the union of every EOS id these name, since
checkpoints disagree on which file holds them (Llama 3 Instruct lists `<|eot_id|>` only in
generation_config.json). Sampling defaults count only where generation_config says `do_sample`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from museserve.checkpoint.info import CheckpointInfo
from museserve.checkpoint.paths import CheckpointError

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")
SAMPLING_KEYS = {"temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float}
DEFAULT_TEMPLATE_NAME = "default"


# Where a directory's stop ids come from; none set is refused where a chat format needs them
# (a Muse-format tokenizer brings its own end tokens).
EOS_KEYS = "generation_config.json eos_token_id, config.json eos_token_id, tokenizer_config.json eos_token"


def read_hf_directory(source: Path) -> CheckpointInfo:
    if not source.is_dir():
        raise CheckpointError(f"{source}: load_format safetensors needs a Hugging Face directory, not a file")
    config = _json(source / "config.json", required=True)
    tokenizer_config = _json(source / "tokenizer_config.json")
    generation_config = _json(source / "generation_config.json")
    tokenizer_file = source / "tokenizer.json"
    tokenizer_json = tokenizer_file.read_text(encoding="utf-8") if tokenizer_file.is_file() else None
    specials = {**_special_tokens(_json(source / "special_tokens_map.json")), **_special_tokens(tokenizer_config)}
    eos_ids = _ids(generation_config.get("eos_token_id")) | _ids(config.get("eos_token_id"))
    if tokenizer_json is not None and "eos_token" in specials:
        eos_ids.add(_token_id(tokenizer_json, specials["eos_token"], tokenizer_file))
    return CheckpointInfo(
        source=source,
        load_format="safetensors",
        hf_config=config,
        tokenizer_json=tokenizer_json,
        chat_template=_chat_template(source, tokenizer_config),
        special_tokens=specials,
        eos_token_ids=tuple(sorted(eos_ids)),
        generation_defaults=_generation_defaults(generation_config, source / "generation_config.json"),
    )


def _json(file: Path, *, required: bool = False) -> dict[str, Any]:
    if not file.is_file():
        if required:
            raise CheckpointError(f"{file.parent}: {file.name} is missing")
        return {}
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(value).__name__}")
    return value


def _special_tokens(tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    """Names -> token text; transformers writes each either as a string or as an AddedToken dict."""
    tokens: dict[str, str] = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = tokenizer_config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


def _ids(value: Any) -> set[int]:
    """An `eos_token_id` value: absent, one id or a list of ids."""
    if value is None:
        return set()
    return {int(token_id) for token_id in (value if isinstance(value, list) else [value]) if token_id is not None}


def _token_id(tokenizer_json: str, token: str, tokenizer_file: Path) -> int:
    token_id = Tokenizer.from_str(tokenizer_json).token_to_id(token)
    if token_id is None:
        raise CheckpointError(f"{tokenizer_file}: tokenizer_config.json's eos_token {token!r} is not in the vocabulary")
    return token_id


def _chat_template(source: Path, tokenizer_config: Mapping[str, Any]) -> str | None:
    jinja = source / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get(DEFAULT_TEMPLATE_NAME)
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{source / 'tokenizer_config.json'}: chat_template is neither a string nor a list")
    return template


def _generation_defaults(generation_config: Mapping[str, Any], file: Path) -> dict[str, float | int]:
    if generation_config.get("do_sample") is not True:
        return {}  # greedy checkpoints: their temperature/top_p are inert leftovers, not advice
    defaults: dict[str, float | int] = {}
    for key, kind in SAMPLING_KEYS.items():
        value = generation_config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CheckpointError(f"{file}: {key} {value!r} is not a number")
        defaults[key] = kind(value)
    return defaults
