"""A real Redis Cluster of three masters (no replicas) on free loopback ports, for tests
and benches that claim to run on a cluster.

Each master keeps no data on disk. `kill(i)` stops one master for good, as a lost shard:
with `cluster-require-full-coverage no` the other masters keep serving their slots.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

MASTERS = 3
NODE_TIMEOUT_MS = 2000


def _free_pair() -> int:
    """A port P with P and its cluster bus port (P + 10000) both free."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port + 10000 > 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _command(port: int, *args: str) -> bytes:
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload.encode())
        return s.recv(1 << 16)


class RedisClusterServers:
    def __init__(self, masters: int = MASTERS):
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are not installed (make test installs them from apt)")
        self.ports: list[int] = []
        self._dir = Path(tempfile.mkdtemp(prefix="museserve-redis-cluster-"))
        self._processes: list[subprocess.Popen | None] = []
        self._masters = masters

    @property
    def url(self) -> str:
        """A `redis+cluster://` URL naming every master as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout_s: float = 20.0) -> RedisClusterServers:
        deadline = time.monotonic() + timeout_s
        for _ in range(self._masters):
            port = _free_pair()
            self.ports.append(port)
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            args += ["--cluster-config-file", str(self._dir / f"nodes-{port}.conf"), "--save", "", "--appendonly"]
            args += ["no", "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no"]
            args += ["--dir", str(self._dir)]
            self._processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda p=port: _command(p, "PING").startswith(b"+PONG"), deadline, f"node {port} answers")
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
        subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=timeout_s
        )
        for port in self.ports:
            self._wait(
                lambda p=port: b"cluster_state:ok" in _command(p, "CLUSTER", "INFO"), deadline, "cluster_state:ok"
            )
        return self

    def kill(self, index: int) -> None:
        """Stops master `index` (SIGKILL: no goodbye to the others)."""
        process = self._processes[index]
        if process is not None:
            process.kill()
            process.wait(timeout=10)
            self._processes[index] = None

    def port_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot`, from CLUSTER SLOTS of a live node."""
        port = next(p for i, p in enumerate(self.ports) if self._processes[i] is not None)
        with redis.Redis(port=port, socket_timeout=2) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def close(self) -> None:
        for index in range(len(self._processes)):
            self.kill(index)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while True:
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster: no {what} in time")
            time.sleep(0.05)

    def __enter__(self) -> RedisClusterServers:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def redis_cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers() as cluster:
        yield cluster
