"""What the preprocess tier reports, as Prometheus metrics through Ray's metrics agent.

Names carry the `museserve_preprocess_` prefix (Ray's exporter adds `ray_`). Labels stay
bounded: `model` is the pool (config-sized), `call` is prepare or count, `kind` is image or
audio. Only calls that succeed are observed; a refused request (a prompt over the context
window, an image too large) is counted once, at the gateway, by its final status code.
Text-only requests that the gateway tokenizes itself (`gateway.inline_text_preprocess`)
never reach this tier, so these series describe media requests and inline-off setups.
"""

from __future__ import annotations

from collections.abc import Iterable

from ray.util.metrics import Counter, Histogram

# Tokenizing a short prompt takes well under a millisecond; decoding a large image or a long
# audio clip, and fetching an image URL, take up to seconds.
PREPROCESS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class PreprocessMetrics:
    """Every method is cheap (no I/O). Outside a Ray worker they accept observations and export nothing."""

    def __init__(self) -> None:
        self._seconds = Histogram(
            "museserve_preprocess_seconds",
            "Time of one preprocess call (media fetch, decode, template, tokenize), by call: prepare, count.",
            PREPROCESS_BUCKETS,
            ("model", "call"),
        )
        self._media_tokens = Counter(
            "museserve_preprocess_media_tokens_total",
            "Prompt positions taken by media placeholders in prepared requests, by kind: image, audio.",
            ("model", "kind"),
        )
        self._media_items = Counter(
            "museserve_preprocess_media_items_total",
            "Images and audio clips decoded for prepared requests, by kind: image, audio.",
            ("model", "kind"),
        )

    def prepared(self, pool: str, seconds: float, media: Iterable[tuple[str, int]]) -> None:
        """A request was prepared for `pool`; `media`: (kind, placeholder tokens) per segment."""
        self._seconds.observe(seconds, {"model": pool, "call": "prepare"})
        for kind, num_tokens in media:
            tags = {"model": pool, "kind": kind}
            self._media_items.inc(1, tags)
            if num_tokens:
                self._media_tokens.inc(num_tokens, tags)

    def counted(self, pool: str, seconds: float) -> None:
        self._seconds.observe(seconds, {"model": pool, "call": "count"})
