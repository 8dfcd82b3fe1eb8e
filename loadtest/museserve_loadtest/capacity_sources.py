"""Per-replica figures read from the files runs write, each marked with its file and key.

- a sweep (`museserve-loadtest sweep --out`): the knee's goodput at the SLO, per replica;
- `.bench/engine.json` (tests/bench/bench_engine.py): decode tokens/s, step time, prefill rate;
- `.bench/prefix_routing.json` (tests/bench/bench_prefix_routing.py): the prefix hit rate;
- `.bench/answers.json` (tests/bench/bench_answers.py): the prefill N agents share;
- `.bench/gateway.json` (tests/bench/bench_gateway.py): Redis decisions per request, keys per decision.

A reader raises ValueError naming the file and the key it lacks; it never guesses a value.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .capacity_figures import Figure, measured


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None


def _at(doc: Mapping, path: Path, key: str) -> Any:
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            raise ValueError(f"{path}: lacks {key}")
        node = node[part]
    return node


def _number(doc: Mapping, path: Path, key: str) -> float:
    value = _at(doc, path, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {key} is not a number ({value!r})")
    return float(value)


def from_sweep(path: Path, replicas: int) -> list[Figure]:
    """decode tokens/s per replica at the knee = knee goodput req/s x (output + reasoning tokens of
    the knee's run) / replicas. The knee's requests also prefilled their prompts, so this decode
    rate carries their prefill time: it under- rather than over-states the replica."""
    if replicas < 1:
        raise ValueError(f"sweep_replicas: must be >= 1, got {replicas}")
    doc = _load(path)
    if doc.get("kind") != "sweep":
        raise ValueError(f"{path}: not a sweep report (kind {doc.get('kind')!r})")
    rate = (doc.get("knee") or {}).get("rate")
    if rate is None:
        raise ValueError(f"{path}: knee.rate is null: the lowest rate already failed; sweep from a lower rate")
    goodput = _number(doc, path, "knee.goodput_rps")
    runs = [r for r in doc.get("runs", ()) if r.get("config", {}).get("rate") == rate]
    if not runs:
        raise ValueError(f"{path}: no run at the knee rate {rate}")
    tokens = runs[0].get("tokens") or {}
    decode = float(tokens.get("output_mean") or 0.0) + float(tokens.get("reasoning_mean") or 0.0)
    if goodput <= 0 or decode <= 0:
        raise ValueError(f"{path}: the knee at {rate} req/s has no good request with output tokens")
    key = f"knee.goodput_rps x runs[rate={rate:g}].tokens.(output_mean + reasoning_mean) / {replicas} replicas"
    return [measured("decode_tokens_per_s_per_replica", goodput * decode / replicas, path, key)]


def from_engine(path: Path) -> list[Figure]:
    """Decode at the bench's concurrency (`ours`), and prefill of one cold 2k-token prompt on an idle
    engine: prompt tokens / median cold TTFT, a lower bound of batched prefill."""
    doc = _load(path)
    cold = _at(doc, path, "prefix_cache.cold_turn_ttft_s")
    prompt = _number(doc, path, "prefix_cache.prompt_tokens")
    if not isinstance(cold, list) or not cold:
        raise ValueError(f"{path}: prefix_cache.cold_turn_ttft_s is not a list of seconds")
    prefill = prompt / statistics.median(float(x) for x in cold)
    device = doc.get("device", "?")
    what = f"{doc.get('model', {}).get('source', '?')} on {device}"
    return [
        measured(
            "decode_tokens_per_s_per_replica",
            _number(doc, path, "ours.output_tokens_per_s"),
            path,
            f"ours.output_tokens_per_s ({what})",
        ),
        measured("decode_step_s", _number(doc, path, "ours.step_s_p50"), path, f"ours.step_s_p50 ({what})"),
        measured(
            "prefill_tokens_per_s_per_replica",
            prefill,
            path,
            f"prefix_cache.prompt_tokens / median(prefix_cache.cold_turn_ttft_s) ({what})",
        ),
    ]


def from_prefix_routing(path: Path) -> list[Figure]:
    """The share of prompt tokens the prefix cache served under prefix-aware routing."""
    doc = _load(path)
    share = _number(doc, path, "cached_token_share.prefix")
    workload = doc.get("workload", {}).get("name", "?")
    return [measured("prefix_hit_rate", share, path, f"cached_token_share.prefix ({workload})")]


def from_answers(path: Path) -> list[Figure]:
    """Prefill of N agents on one prompt over N separate requests (the agents share its KV blocks)."""
    doc = _load(path)
    ratio = _number(doc, path, "n4_prefill_ratio")
    return [measured("agents_prefill_ratio", ratio, path, "n4_prefill_ratio (4 agents)")]


def from_gateway(path: Path) -> list[Figure]:
    """Scripts per request (admission + settlement) and the keys one script reads: GETs run inside
    the scripts over the EVALSHAs clients sent (each key is read once per decision)."""
    doc = _load(path)
    decisions = _number(doc, path, "redis_admission_decisions_per_request") + _number(
        doc, path, "redis_settlements_per_request"
    )
    scripts = _number(doc, path, "redis_commands_sent_by_clients.evalsha")
    if scripts <= 0:
        raise ValueError(f"{path}: redis_commands_sent_by_clients.evalsha is 0: no decision was measured")
    keys = _number(doc, path, "redis_commands_inside_scripts.get") / scripts
    return [
        measured(
            "redis_decisions_per_request",
            decisions,
            path,
            "redis_admission_decisions_per_request + redis_settlements_per_request",
        ),
        measured(
            "redis_keys_per_decision",
            keys,
            path,
            "redis_commands_inside_scripts.get / redis_commands_sent_by_clients.evalsha",
        ),
    ]
