"""Each pool's preprocessor is bound to that pool's config; an unknown pool is a KeyError."""

from __future__ import annotations

import pytest

from museserve.config import parse_config
from museserve.domain import ChatRequest, Message, Role, TextPart
from museserve.preprocess.pool_preprocessors import PoolPreprocessors

CONFIG = parse_config(
    {
        "pools": [
            {"name": "short", "engine": {"context_length": 50_000}},
            {"name": "long", "engine": {"context_length": 100_000}},
        ]
    }
)


def test_each_pool_prepares_against_its_own_config() -> None:
    preprocessors = PoolPreprocessors(CONFIG)
    request = ChatRequest("r1", (Message(Role.USER, (TextPart("hello"),)),))
    for pool in CONFIG.pools:
        bound = preprocessors[pool.name]
        assert bound.pool is pool
        assert bound.prepare(request).pool == pool.name
        count = bound.count(request)
        assert (count.pool, count.context_length) == (pool.name, pool.engine.context_length)


def test_an_unknown_pool_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="absent"):
        PoolPreprocessors(CONFIG)["absent"]
