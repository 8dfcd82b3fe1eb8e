"""Ray Serve's own gRPC ingress options against ours; the figures are defined in
`tests/bench/ingress/__init__.py`. Each mode runs in a process of its own.

    python -m tests.bench.bench_ingress --out .bench/ingress.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench import ingress
from tests.bench.ingress.cancels import CANCEL_ROUNDS, CANCEL_WAIT_S, DELTAS_BEFORE_CANCEL, STREAMS
from tests.bench.ingress.latency import WARMUP
from tests.bench.ingress.modes import LONG_OUTPUT, MODES, haproxy_pids
from tests.bench.report import write_report

MODE_TIMEOUT_S = 600


def haproxy_binary() -> dict:
    try:
        from ray.serve._private.haproxy import get_haproxy_binary

        binary = get_haproxy_binary()
        version = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
        return {"path": binary, "version": version.stdout.splitlines()[0] if version.stdout else version.stderr}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def run_mode_process(mode: str, requests: int) -> dict:
    """`mode` in a child process whose environment carries the mode's Ray settings."""
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        part = Path(tmp) / "mode.json"
        command = [sys.executable, "-m", "tests.bench.bench_ingress", "--run-mode", mode, "--mode-out", str(part)]
        command += ["--requests", str(requests)]
        env = {**os.environ, **MODES[mode][0], "RAY_USAGE_STATS_ENABLED": "0"}
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=MODE_TIMEOUT_S)
            if done.returncode == 0 and part.exists():
                result = json.loads(part.read_text())
            else:
                result = {"error": f"exit {done.returncode}", "stderr_tail": done.stderr[-3000:]}
        except subprocess.TimeoutExpired as e:
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            result = {"error": f"ran past {MODE_TIMEOUT_S} s", "stderr_tail": stderr[-3000:]}
    result["leftover_haproxy_pids"] = haproxy_pids()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=ingress.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/ingress.json"))
    parser.add_argument("--requests", type=int, default=200, help="Measured unary calls per path.")
    parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated subset of: " + ", ".join(MODES))
    parser.add_argument("--run-mode", help=argparse.SUPPRESS)  # internal: one mode in this process
    parser.add_argument("--mode-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_mode:
        from tests.bench.ingress.mode_run import run_mode

        args.mode_out.write_text(json.dumps(run_mode(args.run_mode, args.requests), indent=2))
        return

    import museserve
    from tests.bench.bench_engine import source_state
    from tests.bench.machine import machine

    started = time.perf_counter()
    modes: dict[str, dict] = {}
    for mode in args.modes.split(","):
        print(f"mode {mode} ...", file=sys.stderr, flush=True)
        modes[mode] = run_mode_process(mode, args.requests)
    report = {
        "benchmark": "ingress",
        "machine": machine(),
        "source": source_state(),
        "museserve_source": str(Path(museserve.__file__).parent),
        "haproxy_binary": haproxy_binary(),
        "workload": {
            "latency": "unary Chat, greedy, 1 output token, tiny pool (dummy weights); paths of a mode in turns",
            "cancel": f"{STREAMS} ChatStream calls at once per round, rounds per pool {CANCEL_ROUNDS} (dummy "
            f"weights), temperature 1, max_output_tokens {LONG_OUTPUT}, client cancel after "
            f"{DELTAS_BEFORE_CANCEL} text deltas; replica stats read every 50 ms for {CANCEL_WAIT_S:g} s after "
            "the last cancel; stopped by the shipped path alone (Ray's cancellation of the gateway and pool calls)",
            "errors": "INVALID_ARGUMENT (BadRequest), RESOURCE_EXHAUSTED (RetryInfo), UNAUTHENTICATED (ErrorInfo)",
            "requests_per_path": args.requests,
            "warmup_per_path": WARMUP,
        },
        "modes": modes,
        "wall_s": time.perf_counter() - started,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
