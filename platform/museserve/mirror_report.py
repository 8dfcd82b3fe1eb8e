"""`museserve mirror report`: how a candidate pool's shadow answers compare with the primary's.

Statistics over mirror records (latency, errors, agreement, similarity), a PNG plot, and an
optional external grader that scores each pair where both sides answered. Records come from
a JSONL file or Redis (a single server or a cluster, `redis+cluster://`): the stream and
every group stream of `redis.mirror_streams`, merged oldest first (`mirror_sinks.read_records`).
"""

from __future__ import annotations

import difflib
import json
import shlex
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from museserve.gateway.mirror_records import MirrorRecord, MirrorSide
from museserve.gateway.mirror_sinks import MirrorSourceError, read_records

SIDES = ("primary", "candidate")
DIGEST_NOTE = (
    "some pairs keep no text (content=digest): exact agreement compares their output digests, and "
    "normalised agreement and token similarity skip them"
)


class GraderError(Exception):
    """The grader command failed: not found, non-zero exit, timeout, or output that is not scores."""


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def normalise(text: str) -> str:
    """Case-folded, punctuation removed, whitespace collapsed."""
    kept = "".join(c for c in text.casefold() if not unicodedata.category(c).startswith("P"))
    return " ".join(kept.split())


def token_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


def _side_stats(sides: list[MirrorSide]) -> dict[str, Any]:
    status = Counter(s.status for s in sides)
    attempted = len(sides) - status["SKIPPED"]
    errors = attempted - status["OK"]
    ok = [s for s in sides if s.answered]
    latency = [s.latency_s for s in ok if s.latency_s is not None]
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    tokens = [float(s.output_tokens) for s in ok]
    return {
        "pools": sorted({s.pool for s in sides}),
        "status": dict(status.most_common()),
        "error_rate": errors / attempted if attempted else None,
        "latency_s": {"p50": percentile(latency, 0.5), "p90": percentile(latency, 0.9)}
        | {"p99": percentile(latency, 0.99), "mean": mean(latency)},
        "ttft_s": {"p50": percentile(ttft, 0.5), "p99": percentile(ttft, 0.99)},
        "output_tokens": {"mean": mean(tokens), "p50": percentile(tokens, 0.5)},
    }


def length_ratios(records: list[MirrorRecord]) -> list[float]:
    """Candidate/primary output tokens over pairs where both answered and the primary said something."""
    pairs = [(r.primary, r.candidate) for r in records if r.primary.answered and r.candidate.answered]
    return [c.output_tokens / p.output_tokens for p, c in pairs if p.output_tokens > 0]


def build_report(records: list[MirrorRecord]) -> dict[str, Any]:
    """error_rate excludes SKIPPED sides (never sent); latencies cover OK sides only."""
    both = [r for r in records if r.primary.answered and r.candidate.answered]
    exact, by_digest = 0, 0
    texts: list[tuple[str, str]] = []
    for p, c in ((r.primary, r.candidate) for r in both):
        if p.text is None or c.text is None:
            by_digest += 1
            exact += p.output_digest == c.output_digest
        else:
            exact += p.text == c.text
            texts.append((p.text, c.text))
    latency_ratios = [
        r.candidate.latency_s / r.primary.latency_s
        for r in both
        if r.primary.latency_s and r.candidate.latency_s is not None
    ]
    pairs = {
        "both_ok": len(both),
        "exact_agreement": exact / len(both) if both else None,
        "compared_by_digest": by_digest,
        "text_pairs": len(texts),
        "normalised_agreement": mean([float(normalise(p) == normalise(c)) for p, c in texts]),
        "token_similarity_mean": mean([token_similarity(p, c) for p, c in texts]),
        "length_ratio_mean": mean(length_ratios(records)),
        "latency_ratio_p50": percentile(latency_ratios, 0.5),
    }
    report: dict[str, Any] = {
        "count": len(records),
        "content": dict(Counter(r.content for r in records)),
        "primary": _side_stats([r.primary for r in records]),
        "candidate": _side_stats([r.candidate for r in records]),
        "pairs": pairs,
        "notes": [DIGEST_NOTE] if by_digest else [],
    }
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_report(report: dict[str, Any]) -> str:
    p, c = report["primary"], report["candidate"]
    rows: list[tuple[str, Any, Any]] = [
        ("pool", ", ".join(p["pools"]), ", ".join(c["pools"])),
        ("status", _status(p["status"]), _status(c["status"])),
        ("error rate", p["error_rate"], c["error_rate"]),
    ]
    for metric, stats in (("latency_s", ("p50", "p90", "p99", "mean")), ("ttft_s", ("p50", "p99"))):
        rows += [(f"{metric} {s}", p[metric][s], c[metric][s]) for s in stats]
    rows += [(f"output tokens {s}", p["output_tokens"][s], c["output_tokens"][s]) for s in ("mean", "p50")]
    cells = [(name, _fmt(a), _fmt(b)) for name, a, b in rows]
    width = max(len(r[0]) for r in cells) + 2
    column = max(12, *(len(v) + 3 for r in cells for v in r[1:]))
    lines = [f"mirror records: {report['count']}  (content: {_status(report['content'])})", ""]
    lines.append(f"{'':<{width}}{'primary':>{column}}{'candidate':>{column}}")
    lines += [f"{name:<{width}}{a:>{column}}{b:>{column}}" for name, a, b in cells]
    pairs = report["pairs"]
    lines += ["", f"pairs where both answered: {pairs['both_ok']}"]
    labels = {
        "exact_agreement": "exact agreement",
        "normalised_agreement": f"normalised agreement ({pairs['text_pairs']} pairs with text)",
        "token_similarity_mean": "token similarity, mean",
        "length_ratio_mean": "length ratio candidate/primary (output tokens), mean",
        "latency_ratio_p50": "latency ratio candidate/primary, p50",
    }
    lines += [f"  {label:<54}{_fmt(pairs[key])}" for key, label in labels.items()]
    if "grader" in report:
        g = report["grader"]
        lines += ["", f"grader {g['command']!r}: {g['graded']} graded, mean score {_fmt(g['mean_score'])}"]
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _status(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def write_plot(records: list[MirrorRecord], path: str | Path) -> None:
    """Latency CDFs of both sides and a histogram of candidate/primary length ratios, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: only the report plots
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    cdf, hist = fig.subplots(1, 2)
    for side in SIDES:
        latency = sorted(s.latency_s for r in records if (s := getattr(r, side)).answered and s.latency_s is not None)
        if latency:
            cdf.step(latency, [(i + 1) / len(latency) for i in range(len(latency))], where="post", label=side)
    cdf.set(title="latency CDF (answered requests)", xlabel="latency (s)", ylabel="fraction")
    if cdf.get_lines():
        cdf.legend()
    ratios = length_ratios(records)
    if ratios:
        hist.hist(ratios, bins=min(40, max(5, len(ratios) // 5)))
    hist.set(title="length ratio candidate/primary (output tokens)", xlabel="ratio", ylabel="pairs")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")


def run_grader(records: list[MirrorRecord], command: str, timeout_s: float) -> dict[str, Any]:
    """Runs `command` once with one JSON pair per line on stdin (pairs where both answered);
    expects one {"request_id", "score"} object per line on stdout."""
    argv = shlex.split(command)
    both = [r for r in records if r.primary.answered and r.candidate.answered]
    stdin = "".join(json.dumps(_grader_pair(r), ensure_ascii=False) + "\n" for r in both)
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, ValueError) as e:
        raise GraderError(f"grader {command!r} could not start: {e}") from None
    except subprocess.TimeoutExpired:
        raise GraderError(f"grader {command!r} timed out after {timeout_s:g}s") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        raise GraderError(f"grader {command!r} exited with {done.returncode}: " + " | ".join(tail))
    scores: dict[str, float] = {}
    for number, line in enumerate(done.stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            scores[str(item["request_id"])] = float(item["score"])
        except (ValueError, TypeError, KeyError) as e:
            raise GraderError(f"grader {command!r} stdout line {number} is not a score object ({e!r})") from None
    graded = {"command": command, "sent": len(both), "graded": len(scores), "mean_score": mean(list(scores.values()))}
    return graded | {"scores": scores}


def _grader_pair(record: MirrorRecord) -> dict[str, Any]:
    data = record.to_json()
    return {k: data[k] for k in ("request_id", "input", "primary", "candidate")}


def report_command(
    source: str,
    *,
    stream: str,
    limit: int | None = None,
    json_out: Path | None = None,
    plot_out: Path | None = None,
    grader: str | None = None,
    grader_timeout_s: float = 600.0,
) -> int:
    """The CLI's `mirror report`: 0 on success, 1 with a message on stderr otherwise."""
    try:
        if limit is not None and limit < 1:
            raise MirrorSourceError(f"--limit must be at least 1, not {limit}")
        records = read_records(source, limit=limit, stream=stream)
        if not records:
            raise MirrorSourceError(f"no mirror records in {source}")
        report = build_report(records)
        if grader:
            report["grader"] = run_grader(records, grader, grader_timeout_s)
        if plot_out is not None:
            write_plot(records, plot_out)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2) + "\n")
    except (MirrorSourceError, GraderError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0
