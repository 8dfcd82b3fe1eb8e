"""What became of every request a chaos scenario sent, and the summary table.

Each request ends in exactly one of four ways:
- completed: the stream ended OK with its finish event;
- refused: RESOURCE_EXHAUSTED or UNAVAILABLE before any token, a clean answer the client
  may retry (shed under overload, a draining gateway, no replica for a moment); also
  CANCELLED from the server before any token: how grpc.aio's `server.stop` answers a call
  that reaches the transport as the stopping gateway sends GOAWAY, before any handler sees
  it (a standalone grpc.aio server stopped under load ended 18 of 32,000 calls so, whether
  or not its handler was already refusing). Nothing was started, so a retry is safe; the
  table lists these refusals by status;
- interrupted: UNAVAILABLE after tokens had streamed, what a replica dying mid-stream
  looks like; the client retries it, but it is a loss for a drain or an overload;
- lost: anything else: no answer before the client's deadline, a stream cut without its
  finish event, INTERNAL, UNKNOWN. A scenario passes only with none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from museserve_loadtest.records import Sample

REFUSALS = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})
RACED_SHUTDOWN = "CANCELLED"  # from the server; the runner's own cancels are CLIENT_CANCELLED
OUTCOMES = ("completed", "refused", "interrupted", "lost")


def outcome(sample: Sample) -> str:
    if sample.ok:
        return "completed"
    if sample.status in REFUSALS:
        return "interrupted" if sample.token_times else "refused"
    if sample.status == RACED_SHUTDOWN and not sample.token_times:
        return "refused"
    return "lost"


@dataclass(frozen=True)
class Tally:
    scenario: str
    sent: int
    completed: int
    refused: int
    interrupted: int
    lost: int
    lost_statuses: dict[str, int] = field(default_factory=dict)
    notes: str = ""
    lost_examples: tuple[str, ...] = ()  # status, timing and message of the first few lost
    refused_statuses: dict[str, int] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return self.sent - self.refused

    @classmethod
    def of(cls, scenario: str, samples: Iterable[Sample], notes: str = "") -> Tally:
        samples = list(samples)
        counts = Counter(outcome(s) for s in samples)
        lost = [s for s in samples if outcome(s) == "lost"]
        statuses = Counter(s.status or "NO_STATUS" for s in lost)
        examples = tuple(_describe(s) for s in lost[:3])
        refused = Counter(s.status for s in samples if outcome(s) == "refused")
        return cls(scenario, len(samples), *(counts[o] for o in OUTCOMES), dict(statuses), notes, examples,
                   dict(refused))  # fmt: skip

    def as_dict(self) -> dict:
        return asdict(self) | {"accepted": self.accepted}


def _describe(s: Sample) -> str:
    sent = "never sent" if s.sent is None else f"sent at {s.sent:.2f} s"
    ended = "never ended" if s.end is None else f"ended at {s.end:.2f} s"
    return f"{s.status}: {sent}, {ended}, {len(s.token_times)} tokens; {s.error[:200]}"


COLUMNS = ("scenario", "sent", "accepted", "completed", "refused", "interrupted", "lost")


def table(tallies: Sequence[Tally]) -> str:
    """A fixed-width table, one row per scenario, then a line per scenario's notes."""
    rows = [COLUMNS] + [tuple(str(getattr(t, c)) for c in COLUMNS) for t in tallies]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    for t in tallies:
        if t.notes:
            lines.append(f"{t.scenario}: {t.notes}")
        if t.refused_statuses:
            lines.append(f"{t.scenario}: refused {t.refused_statuses}")
        if t.lost_statuses:
            lines.append(f"{t.scenario}: LOST {t.lost_statuses}")
            lines.extend(f"    {example}" for example in t.lost_examples)
    return "\n".join(lines)
