"""What a replica's adapter manager reports: loads, failed loads, evictions, residency, and the
tokens each adapter served. `AdapterMetrics` exports them through Ray (as the engine's
`EngineMetrics` does); `InMemoryAdapterMetrics` keeps them in this process (tests, benches)."""

from __future__ import annotations

import collections
from typing import Protocol

LOAD_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


class AdapterRecorder(Protocol):
    def loaded(self, adapter: str, seconds: float) -> None: ...
    def load_failed(self, adapter: str) -> None: ...
    def evicted(self, adapter: str) -> None: ...
    def resident(self, count: int) -> None: ...
    def tokens(self, adapter: str, prompt_tokens: int, generated_tokens: int) -> None: ...


class InMemoryAdapterMetrics:
    def __init__(self) -> None:
        self.loads: collections.Counter[str] = collections.Counter()
        self.load_seconds: list[float] = []
        self.load_failures: collections.Counter[str] = collections.Counter()
        self.evictions: collections.Counter[str] = collections.Counter()
        self.num_resident = 0
        self.prompt_tokens: collections.Counter[str] = collections.Counter()
        self.generated_tokens: collections.Counter[str] = collections.Counter()

    def loaded(self, adapter: str, seconds: float) -> None:
        self.loads[adapter] += 1
        self.load_seconds.append(seconds)

    def load_failed(self, adapter: str) -> None:
        self.load_failures[adapter] += 1

    def evicted(self, adapter: str) -> None:
        self.evictions[adapter] += 1

    def resident(self, count: int) -> None:
        self.num_resident = count

    def tokens(self, adapter: str, prompt_tokens: int, generated_tokens: int) -> None:
        self.prompt_tokens[adapter] += prompt_tokens
        self.generated_tokens[adapter] += generated_tokens


class AdapterMetrics:
    """Labelled by `model` (the pool) and `adapter`: an adapter name is chosen by operators, so
    the label's values are bounded by the pool's adapter store."""

    def __init__(self, model: str):
        from ray.util.metrics import Counter, Gauge, Histogram  # here: the engine itself runs without Ray

        by_adapter = ("model", "adapter")
        self._model = model
        self._loads = Counter("museserve_lora_loads_total", "Adapters loaded into a replica.", by_adapter)
        self._load_time = Histogram(
            "museserve_lora_load_seconds", "Reading, checking and placing an adapter.", LOAD_BUCKETS, ("model",)
        )
        self._failures = Counter(
            "museserve_lora_load_failures_total", "Adapters refused at load (malformed or too large).", by_adapter
        )
        self._evictions = Counter("museserve_lora_evictions_total", "Idle adapters evicted for another.", by_adapter)
        self._resident = Gauge("museserve_lora_resident_adapters", "Adapters resident in a replica.", ("model",))
        self._prompt = Counter("museserve_lora_prompt_tokens_total", "Prompt tokens of adapter requests.", by_adapter)
        self._generated = Counter(
            "museserve_lora_generation_tokens_total", "Tokens generated with an adapter.", by_adapter
        )

    def _tags(self, adapter: str) -> dict[str, str]:
        return {"model": self._model, "adapter": adapter}

    def loaded(self, adapter: str, seconds: float) -> None:
        self._loads.inc(1, self._tags(adapter))
        self._load_time.observe(seconds, {"model": self._model})

    def load_failed(self, adapter: str) -> None:
        self._failures.inc(1, self._tags(adapter))

    def evicted(self, adapter: str) -> None:
        self._evictions.inc(1, self._tags(adapter))

    def resident(self, count: int) -> None:
        self._resident.set(count, {"model": self._model})

    def tokens(self, adapter: str, prompt_tokens: int, generated_tokens: int) -> None:
        if prompt_tokens:  # Ray's Counter refuses 0
            self._prompt.inc(prompt_tokens, self._tags(adapter))
        if generated_tokens:
            self._generated.inc(generated_tokens, self._tags(adapter))
