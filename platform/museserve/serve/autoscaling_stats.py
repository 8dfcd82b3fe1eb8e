"""What replicas report to Serve's autoscaler (`record_autoscaling_stats`), and the names
the policies read it by (`serve.autoscaling_policies`). Values are plain floats: Serve
disables a replica's custom metrics for good if the first report holds anything else."""

from __future__ import annotations

import time

from museserve.messages import ReplicaLoad

KV_USAGE = "museserve_kv_usage"  # fraction of the replica's KV blocks in use
WAITING = "museserve_waiting"  # requests waiting in the replica's engine
TTFT_P90_S = "museserve_ttft_p90_s"  # recent TTFT p90; 0 while the replica is idle
IN_FLIGHT = "museserve_in_flight"  # a gateway's requests in flight, from both ports
CPU = "museserve_cpu"  # CPU seconds per second, the replica's process


def pool_stats(load: ReplicaLoad) -> dict[str, float]:
    """An idle replica's last TTFT is history, not pressure: it reports 0, so a pool that went
    quiet after a slow spell can scale down."""
    busy = load.running + load.waiting > 0
    return {
        KV_USAGE: float(load.kv_usage),
        WAITING: float(load.waiting),
        TTFT_P90_S: float(load.ttft_p90_s) if busy else 0.0,
    }


class CpuMeter:
    """CPU use of this process between two readings (all its threads: `time.process_time`)."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def read(self) -> float:
        """CPU seconds per wall second since the previous reading (1.0: one core busy)."""
        cpu, wall = time.process_time(), time.monotonic()
        used = (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._cpu, self._wall = cpu, wall
        return max(0.0, used)
