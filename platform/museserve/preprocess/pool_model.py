"""What the serving tiers know of a pool's model before any weight is loaded.

Each pool's checkpoint is read once per process (metadata only): its chat format (tokenizer,
template, stop ids, reasoning markers), its architecture (the positions it supports, its KV
shape), the media it has projectors for, and its default sampling. Dummy weights serve the
Muse format with the bundled tokenizer (or `preprocess.tokenizer`), every mode, both media
kinds, in the shape `model.size` names.

`PoolModel.window` is the pool's context window (`config.context_window`), the same figure the
model replica derives from the same architecture. `check_pools` is what a pool can do against
what the config asks of it, at start-up, with errors that name the key: a listed mode the
checkpoint cannot serve, a route to a pool that cannot serve the mode. It returns the config
with every pool's `modes` spelled out, which the gateway then routes and validates by.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from museserve.checkpoint import CheckpointError, CheckpointInfo, read_checkpoint
from museserve.checkpoint.hf_directory import EOS_KEYS
from museserve.config import MediaLimits, MuseServeConfig, PoolConfig
from museserve.config.context_window import ContextWindow, context_window
from museserve.config.tree import ConfigError
from museserve.domain import Mode
from museserve.model.config import AUDIO_FEATURE_DIM_KEY, IMAGE_FEATURE_DIM_KEY, LONG_CONTEXT, MuseConfig
from museserve.preprocess.chat_format import ChatFormat
from museserve.preprocess.jinja_format import JinjaFormat
from museserve.preprocess.media import ALL_KINDS
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer, Tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolModel:
    chat_format: ChatFormat
    max_positions: int  # positions the model supports (its RoPE, its scaling)
    media_kinds: frozenset[str]  # media it has projectors for and its format can place
    sampling_defaults: Mapping[str, float] = field(default_factory=dict)  # for fields a request leaves unset
    architecture: MuseConfig | None = None  # a checkpoint's config; None: dummy weights of the pool's `model.size`

    @classmethod
    def muse(cls, tokenizer: MuseTokenizer, media_kinds: frozenset[str] = ALL_KINDS) -> PoolModel:
        """The Muse format with this tokenizer: what dummy weights serve."""
        return cls(MuseFormat(tokenizer), LONG_CONTEXT, media_kinds)

    def window(self, pool: PoolConfig) -> ContextWindow:
        """The pool's context window over this model: derived once per pool, then looked up
        (every request's prompt is checked against it)."""
        return _window(pool, self.architecture, self.chat_format.tokenizer.vocab_size)

    @property
    def modes(self) -> tuple[Mode, ...]:
        """Every mode it can serve: Thinking needs reasoning markers; Contemplating any instruct model."""
        return tuple(m for m in Mode if m is not Mode.THINKING or self.chat_format.can_reason)


def pool_model(pool: PoolConfig, media: MediaLimits, tokenizer: str | None = None) -> PoolModel:
    """`tokenizer`: `preprocess.tokenizer`, for dummy weights and checkpoints without their own."""
    spec = pool.model
    return _read(spec.load_format, spec.path, tokenizer, media.image_feature_dim, media.audio_feature_dim)


@functools.lru_cache(maxsize=16)
def _read(load_format: str, path: str | None, tokenizer: str | None, image_dim: int, audio_dim: int) -> PoolModel:
    if load_format == "dummy":
        return PoolModel.muse(MuseTokenizer.load(tokenizer))
    assert path is not None
    info = read_checkpoint(path, load_format)
    chat_format = _chat_format(info, tokenizer)
    config = info.hf_config
    projectors = {"image": config.get(IMAGE_FEATURE_DIM_KEY) or 0, "audio": config.get(AUDIO_FEATURE_DIM_KEY) or 0}
    expected = {"image": image_dim, "audio": audio_dim}
    for kind, dim in projectors.items():
        if dim and dim != expected[kind]:
            raise CheckpointError(
                f"{info.source}: the model's {kind} projector takes {dim} values per token; "
                f"preprocess.media produces {expected[kind]}"
            )
    kinds = frozenset(k for k, dim in projectors.items() if dim) & chat_format.media_kinds
    arch = MuseConfig.from_hf_dict(config)  # as the model replica reads it: the same positions and KV shape
    logger.info("%s: %s chat format, %d positions, stop ids %s, reasoning %s",
                info.source, chat_format.name, arch.max_position_embeddings, sorted(chat_format.markers.stop_ids),
                "yes" if chat_format.can_reason else "no")  # fmt: skip
    return PoolModel(chat_format, arch.max_position_embeddings, kinds, dict(info.generation_defaults), arch)


@functools.lru_cache(maxsize=64)
def _window(pool: PoolConfig, architecture: MuseConfig | None, vocab_size: int) -> ContextWindow:
    # Dummy weights (no architecture): the named shape; only its KV shape and positions matter.
    arch = architecture if architecture is not None else MuseConfig.named(pool.model.size, vocab_size=vocab_size)
    return context_window(pool, arch)


def _chat_format(info: CheckpointInfo, fallback_tokenizer: str | None) -> ChatFormat:
    """The Muse format when the tokenizer has Muse's control tokens, else the checkpoint's template."""
    if info.tokenizer_json is None:
        return MuseFormat(MuseTokenizer.load(fallback_tokenizer))
    tokenizer = Tokenizer.from_json(info.tokenizer_json, str(info.source))
    if MuseTokenizer.fits(tokenizer):
        return MuseFormat(MuseTokenizer.from_json(info.tokenizer_json, str(info.source)))
    if not info.eos_token_ids:
        keys = EOS_KEYS if info.load_format == "safetensors" else "tokenizer.ggml.eos_token_id"
        raise CheckpointError(f"{info.source}: no stop token: none of {keys} is set")
    if not info.chat_template:
        raise CheckpointError(
            f"{info.source}: no chat template (tokenizer_config.json chat_template, chat_template.jinja, "
            "or the GGUF key tokenizer.chat_template), and its tokenizer lacks the Muse control tokens"
        )
    return JinjaFormat(tokenizer, info.chat_template, info.eos_token_ids, info.special_tokens)


def check_pools(config: MuseServeConfig) -> MuseServeConfig:
    """The config with each pool's modes resolved against its checkpoint; ConfigError naming the
    key for what the checkpoints cannot serve (see the module docstring)."""
    problems: list[str] = []
    pools = []
    for i, pool in enumerate(config.pools):
        try:
            model = pool_model(pool, config.preprocess.media, config.preprocess.tokenizer)
        except (CheckpointError, ValueError, OSError) as e:
            problems.append(f"  pools[{i}].model: {e}")
            pools.append(pool)
            continue
        modes = pool.modes if pool.modes is not None else model.modes
        for mode in modes:
            if mode not in model.modes:
                problems.append(
                    f"  pools[{i}].modes: {pool.name} cannot serve {mode}: its checkpoint has no reasoning markers "
                    "(<think> and </think> in its vocabulary); route thinking to another pool (gateway.routes)"
                )
        pools.append(pool.model_copy(update={"modes": tuple(m for m in modes if m in model.modes)}))
    resolved = config.model_copy(update={"pools": tuple(pools)})
    for mode, name in config.gateway.routes.items():
        if mode not in resolved.pool(name).modes:
            problems.append(f"  gateway.routes.{mode}: pool {name!r} cannot serve {mode}")
    if problems:
        raise ConfigError("the pools cannot serve this config:\n" + "\n".join(problems))
    return resolved


def pool_windows(config: MuseServeConfig) -> dict[str, ContextWindow]:
    """Each pool's context window, by pool name. Call after `check_pools`, which turns an
    unreadable checkpoint into a ConfigError naming the pool."""
    media, tokenizer = config.preprocess.media, config.preprocess.tokenizer
    return {pool.name: pool_model(pool, media, tokenizer).window(pool) for pool in config.pools}
