"""The chaos summary's bookkeeping: every request lands in exactly one outcome."""

from __future__ import annotations

from museserve_loadtest.records import Sample
from tests.chaos.ledger import Tally, outcome, table


def sample(status: str | None, tokens: int = 0, sent: float | None = 0.0, end: float | None = 1.0) -> Sample:
    return Sample(0, 0.0, sent=sent, end=end, status=status, token_times=[0.5] * tokens)


def test_each_ending_has_one_outcome() -> None:
    assert outcome(sample("OK", tokens=3)) == "completed"
    assert outcome(sample("RESOURCE_EXHAUSTED")) == "refused"
    assert outcome(sample("UNAVAILABLE")) == "refused"
    assert outcome(sample("UNAVAILABLE", tokens=2)) == "interrupted"
    assert outcome(sample("CANCELLED")) == "refused"  # a call that raced a gateway's shutdown
    assert outcome(sample("CANCELLED", tokens=1)) == "lost"  # a stream cut after it began
    for lost in ("STREAM_TRUNCATED", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "CLIENT_CANCELLED", None):
        assert outcome(sample(lost, end=None if lost is None else 1.0)) == "lost", lost


def test_a_tally_adds_up_and_the_table_names_what_was_lost() -> None:
    samples = [sample("OK", 3), sample("OK", 1), sample("RESOURCE_EXHAUSTED"), sample("UNAVAILABLE", 2),
               sample("INTERNAL"), sample(None, end=None)]  # fmt: skip
    tally = Tally.of("demo", samples, notes="a note")
    assert (tally.sent, tally.completed, tally.refused, tally.interrupted, tally.lost) == (6, 2, 1, 1, 2)
    assert tally.accepted == 5
    assert tally.lost_statuses == {"INTERNAL": 1, "NO_STATUS": 1}
    assert tally.refused_statuses == {"RESOURCE_EXHAUSTED": 1}
    text = table([tally])
    header, rule, row, *notes = text.splitlines()
    assert header.split() == ["scenario", "sent", "accepted", "completed", "refused", "interrupted", "lost"]
    assert row.split() == ["demo", "6", "5", "2", "1", "1", "2"]
    assert "demo: a note" in notes and any("LOST" in n for n in notes)
    assert tally.as_dict()["accepted"] == 5
