"""What one generation produced, as the gateway saw it: for settling output tokens with
the rate limiter and for mirror records. Text is kept only when asked for (mirroring)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from museserve.domain import Usage
from museserve.messages import GenerationChunk


@dataclass
class StreamCapture:
    pool: str
    keep_text: bool = False
    started: float = field(default_factory=time.monotonic)
    ttft_s: float | None = None
    latency_s: float | None = None
    generated_tokens: int = 0  # counted from chunks, so a stream cut short is counted too
    usage: Usage | None = None
    finish: str = ""
    status: str = ""  # "" while running; "OK" or a status code name once ended
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)

    def observe(self, chunk: GenerationChunk) -> None:
        if self.ttft_s is None and (chunk.text or chunk.reasoning or chunk.num_new_tokens):
            self.ttft_s = time.monotonic() - self.started
        self.generated_tokens += chunk.num_new_tokens
        if self.keep_text:
            if chunk.text:
                self.text.append(chunk.text)
            if chunk.reasoning:
                self.reasoning.append(chunk.reasoning)
        if chunk.finish is not None:
            self.finish = chunk.finish.value
            self.usage = chunk.usage

    def end(self, status: str) -> None:
        if not self.status:
            self.status = status
            self.latency_s = time.monotonic() - self.started

    @property
    def output_tokens(self) -> int:
        """Reasoning plus answer tokens: what a token rate limit charges after the stream."""
        if self.usage is not None:
            return self.usage.reasoning_tokens + self.usage.output_tokens
        return self.generated_tokens
