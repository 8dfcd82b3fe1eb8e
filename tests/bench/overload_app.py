"""The app `bench_overload` measures: the shipped default local setup (SmolLM2-135M as the
default pool, muse-tiny for Thinking) on free ports, with API keys in two tiers (`gold`,
priority 0, and `default`, priority 1) whose rate limits never refuse; and the load tester's
pieces the bench drives it with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from museserve.config import MuseServeConfig, load_config, parse_config
from museserve.gateway.identity import key_digest
from museserve_loadtest.plan import RequestSpec
from museserve_loadtest.records import Clock, Sample, Transport
from museserve_loadtest.workload import Tenant, Workload, load_workload
from tests.support import free_port

GOLD, DEFAULT = "gold", "default"  # tier names, also the workload's tenant names
KEYS = {GOLD: "sk-bench-overload-gold", DEFAULT: "sk-bench-overload-default"}
PRIORITY = {GOLD: 0, DEFAULT: 1}
GENEROUS = {"requests_per_minute": 1_000_000, "tokens_per_minute": 1 << 40}


def bench_config() -> MuseServeConfig:
    """`load_config()` (the shipped local setup) with free ports and `auth: api_key`: one key
    per tier, each tier as the shipped `default` tier is (admission share, objective, ...) but
    for its priority and rate limits too high to ever refuse."""
    data = load_config().model_dump(mode="json")
    data["server"].update(grpc_port=free_port(), http_port=free_port(), direct_grpc_port=free_port())
    gateway = data["gateway"]
    shipped = gateway["tiers"]["default"]
    gateway["tiers"] = {
        tier: {**shipped, "priority": priority, "user": GENEROUS, "tenant": GENEROUS}
        for tier, priority in PRIORITY.items()
    }
    gateway["auth"] = "api_key"
    gateway["api_keys"] = [
        {"sha256": key_digest(key), "tenant": f"bench-{tier}", "tier": tier} for tier, key in KEYS.items()
    ]
    return parse_config(data, source="overload bench config")


def ttft_objective_s(config: MuseServeConfig) -> float:
    """The default pool's admission TTFT objective (2 s as shipped)."""
    pool = next(p for p in config.pools if p.name == config.gateway.default_model)
    return pool.admission.ttft_objective_s


def chat_workload(tiers: Mapping[str, float]) -> Workload:
    """The shipped `chat` workload, its tenants replaced by one per tier (`tiers`: name ->
    weight, so equal weights give equal offered load), each with a user of its own."""
    tenants = [Tenant(name=tier, weight=weight, user=f"bench-{tier}-user") for tier, weight in tiers.items()]
    return load_workload("chat").model_copy(update={"tenants": tenants})


GAVE_UP = "GAVE_UP_AT_STOP"  # a client status: see `GiveUpInDrain`


class GiveUpInDrain:
    """A transport that, once dispatch is over (the run's clock past `dispatch_end_s`), gives
    up on each request that has no first token yet and is older than `objective_s`: it can
    no longer count as good, and cancelling it (status `GAVE_UP`) lets the requests still
    streaming finish within the drain instead of being cut at the hard stop. Before
    `dispatch_end_s` it only passes requests on, so the server sees the open loop as offered."""

    def __init__(self, inner: Transport, dispatch_end_s: float, objective_s: float, poll_s: float = 0.25):
        self.inner, self.dispatch_end_s, self.objective_s, self.poll_s = inner, dispatch_end_s, objective_s, poll_s

    async def send(self, spec: RequestSpec, sample: Sample, clock: Clock, timeout_s: float | None) -> None:
        task = asyncio.create_task(self.inner.send(spec, sample, clock, timeout_s))
        try:
            wait_s = max(self.dispatch_end_s - clock(), 0.0)
            while not (await asyncio.wait({task}, timeout=wait_s))[0]:
                if not sample.token_times and clock() - sample.scheduled > self.objective_s:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    sample.status = GAVE_UP
                    return
                wait_s = self.poll_s
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        task.result()

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True)
class Settled:
    waited_s: float
    probe_ttft_s: float | None


def settle(address: str, timeout_s: float = 90.0, idle_ttft_s: float = 0.5) -> Settled:
    """Waits until a one-token request through the gateway gets its token within
    `idle_ttft_s`, so the backlog of one run (cancelled at its hard stop) has cleared before
    the next starts; gives up after `timeout_s` (the next run then starts on what is left)."""
    from museserve_loadtest.grpc_transport import GrpcTransport

    spec = RequestSpec(index=0, prompt="Say one word.", max_output_tokens=1, tenant=DEFAULT, api_key=KEYS[DEFAULT],
                       user="bench-settle")  # fmt: skip

    async def probe_until_idle() -> Settled:
        transport = GrpcTransport(address)
        loop = asyncio.get_running_loop()
        started = loop.time()
        ttft = None
        try:
            while loop.time() - started < timeout_s:
                sample = Sample(0, loop.time() - started)
                await transport.send(spec, sample, lambda: loop.time() - started, 30.0)
                ttft = sample.ttft
                if sample.ok and ttft is not None and ttft <= idle_ttft_s:
                    break
                await asyncio.sleep(1.0)
        finally:
            await transport.close()
        return Settled(loop.time() - started, ttft)

    return asyncio.run(probe_until_idle())


def wait_direct_port(address: str, timeout_s: float = 60.0) -> None:
    """Until the gateway's own gRPC port answers a chat request (the proxy's health check,
    which `start_local_app` waits for, does not cover it)."""
    deadline = time.monotonic() + timeout_s
    while settle(address, timeout_s=10.0, idle_ttft_s=30.0).probe_ttft_s is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway's direct gRPC port {address} did not answer within {timeout_s} s")
        time.sleep(1.0)
