"""The mirror report: statistics with known answers, the plot, the grader hook, the CLI."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from museserve.cli import main
from museserve.gateway.mirror_records import MirrorRecord, MirrorSide, apply_content_policy
from museserve.mirror_report import GraderError, build_report, normalise, percentile, run_grader, write_plot
from tests.support import free_port

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pair(rid: str, primary: MirrorSide, candidate: MirrorSide) -> MirrorRecord:
    return MirrorRecord(rid, "acme", 1.0, "d" * 64, None, primary, candidate, "outputs")


def ok(pool: str, text: str, latency_s: float, output_tokens: int) -> MirrorSide:
    return MirrorSide.from_answer(pool, text, latency_s=latency_s, ttft_s=latency_s / 10, output_tokens=output_tokens)


def known_records() -> list[MirrorRecord]:
    return [
        pair("r1", ok("p", "Hello world.", 1.0, 10), ok("c", "hello  world", 2.0, 20)),
        pair("r2", ok("p", "same answer", 2.0, 10), ok("c", "same answer", 1.0, 5)),
        pair("r3", ok("p", "a b c d", 3.0, 4), MirrorSide.from_error("c", "UNAVAILABLE", 0.5)),
        pair("r4", ok("p", "x", 4.0, 1), MirrorSide.from_error("c", "SKIPPED")),
    ]


def write_jsonl(path: Path, records: list[MirrorRecord]) -> Path:
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    return path


def grader_script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "grader.py"
    script.write_text("import json, sys, time\n" + body)
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"


SCORING = """
for line in sys.stdin:
    pair = json.loads(line)
    same = pair["primary"]["text"] == pair["candidate"]["text"]
    print(json.dumps({"request_id": pair["request_id"], "score": 1.0 if same else 0.25}))
"""


def test_percentile_interpolates_and_handles_empty() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == pytest.approx(4.6)
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_normalise() -> None:
    assert normalise("  Hello,\n  WORLD!! ") == "hello world"
    assert normalise("Straße") == normalise("STRASSE")
    assert normalise("don't") == "dont"


def test_report_arithmetic() -> None:
    report = build_report(known_records())
    assert report["count"] == 4
    p, c = report["primary"], report["candidate"]
    assert p["status"] == {"OK": 4} and p["error_rate"] == 0.0
    assert p["latency_s"]["p50"] == pytest.approx(2.5)
    assert p["latency_s"]["p90"] == pytest.approx(3.7)
    assert p["latency_s"]["mean"] == pytest.approx(2.5)
    assert p["ttft_s"]["p50"] == pytest.approx(0.25)
    assert p["output_tokens"] == {"mean": pytest.approx(6.25), "p50": pytest.approx(7.0)}
    assert c["status"] == {"OK": 2, "UNAVAILABLE": 1, "SKIPPED": 1}
    assert c["error_rate"] == pytest.approx(1 / 3)  # SKIPPED was never sent
    assert c["latency_s"]["p50"] == pytest.approx(1.5)
    assert c["pools"] == ["c"]
    pairs = report["pairs"]
    assert pairs["both_ok"] == 2 and pairs["text_pairs"] == 2 and pairs["compared_by_digest"] == 0
    assert pairs["exact_agreement"] == 0.5
    assert pairs["normalised_agreement"] == 1.0
    assert pairs["token_similarity_mean"] == pytest.approx(0.5)  # r1: no token equal; r2: identical
    assert pairs["length_ratio_mean"] == pytest.approx(1.25)  # 20/10 and 5/10
    assert pairs["latency_ratio_p50"] == pytest.approx(1.25)  # 2/1 and 1/2
    assert report["notes"] == []
    json.dumps(report)


def test_digest_only_records_compare_by_digest() -> None:
    records = [apply_content_policy(r, "digest") for r in known_records()]
    pairs = build_report(records)["pairs"]
    assert pairs["exact_agreement"] == 0.5
    assert pairs["compared_by_digest"] == 2 and pairs["text_pairs"] == 0
    assert pairs["normalised_agreement"] is None and pairs["token_similarity_mean"] is None
    assert pairs["length_ratio_mean"] == pytest.approx(1.25)
    assert "digest" in build_report(records)["notes"][0]


def test_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "out" / "mirror.png"
    write_plot(known_records(), path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    failed = [pair("r", MirrorSide.from_error("p", "UNAVAILABLE"), MirrorSide.from_error("c", "UNAVAILABLE"))]
    write_plot(failed, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC


def test_grader_scores_pairs_where_both_answered(tmp_path: Path) -> None:
    result = run_grader(known_records(), grader_script(tmp_path, SCORING), timeout_s=30)
    assert (result["sent"], result["graded"]) == (2, 2)
    assert result["mean_score"] == pytest.approx(0.625)
    assert result["scores"] == {"r1": 0.25, "r2": 1.0}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("sys.stderr.write('model quota exhausted'); sys.exit(3)", "exited with 3: model quota exhausted"),
        ("print('{not json')", "stdout line 1 is not a score object"),
        ("print(json.dumps({'request_id': 'r1'}))", "stdout line 1 is not a score object"),
        ("time.sleep(30)", "timed out after 0.5s"),
    ],
)
def test_failing_grader_is_named_in_a_clear_error(tmp_path: Path, body: str, message: str) -> None:
    command = grader_script(tmp_path, body)
    with pytest.raises(GraderError, match="grader .*grader.py") as info:
        run_grader(known_records(), command, timeout_s=0.5)
    assert message in str(info.value)


def test_missing_grader_command() -> None:
    with pytest.raises(GraderError, match="no-such-grader-7f3a.*could not start"):
        run_grader(known_records(), "no-such-grader-7f3a --flag", timeout_s=5)


def test_cli_report_success(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "m.jsonl", known_records())
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    grader = grader_script(tmp_path, SCORING)
    argv = ["mirror", "report", str(source), "--json", str(out_json), "--plot", str(out_png), "--grader", grader]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mirror records: 4" in printed and "exact agreement" in printed and "mean score 0.625" in printed
    report = json.loads(out_json.read_text())
    assert report["count"] == 4 and report["grader"]["graded"] == 2
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert main(["mirror", "report", str(source), "--limit", "1"]) == 0
    assert "mirror records: 1" in capsys.readouterr().out


def test_cli_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mirror", "report", str(tmp_path / "absent.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["mirror", "report", str(tmp_path / "empty.jsonl")]) == 1
    assert "no mirror records" in capsys.readouterr().err
    assert main(["mirror", "report", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    assert "cannot read stream museserve:mirror" in capsys.readouterr().err
    source = write_jsonl(tmp_path / "m.jsonl", known_records())
    assert main(["mirror", "report", str(source), "--grader", grader_script(tmp_path, "sys.exit(2)")]) == 1
    assert "exited with 2" in capsys.readouterr().err
