"""A real `redis-server` on a free loopback port, for tests that claim to use Redis.

It can be stopped and started again on the same port (an outage and a return), and it
keeps no data on disk: a restart comes back empty, as a failed-over replica might.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import free_port


class RedisServer:
    def __init__(self, port: int | None = None):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (make test installs it from apt)")
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="museserve-redis-"))
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--enable-debug-command", "local"]  # DEBUG SLEEP: a slow server, for fault tests
        self._process = subprocess.Popen(
            [*args, "--dir", str(self._dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers_ping():
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode} on port {self.port}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def command(self, *args: str) -> bytes:
        """One command through a raw connection (RESP), for checks that must not go
        through the client under test."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload.encode())
            return s.recv(1 << 20)

    def debug_sleep(self, seconds: float) -> float:
        """Blocks the whole server for `seconds` (a slow Redis); returns `time.monotonic()`
        when it answers again."""
        payload = f"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${len(str(seconds))}\r\n{seconds}\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=seconds + 10) as s:
            s.sendall(payload.encode())
            assert s.recv(64).startswith(b"+OK"), "DEBUG SLEEP refused (the server needs --enable-debug-command)"
        return time.monotonic()

    def command_calls(self, command: str) -> int:
        """How many times the server has run `command` (lower case), from INFO commandstats."""
        for line in self.command("INFO", "commandstats").decode().splitlines():
            if line.startswith(f"cmdstat_{command}:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    def evalsha_calls(self) -> int:
        """EVALSHA commands the server has run (the gateway's rate-limit decisions)."""
        return self.command_calls("evalsha")

    def wait_for_decisions(self, send: Callable[[], object], timeout_s: float) -> None:
        """Calls `send` (a request through the gateway) every 0.2 s until the server has run
        another EVALSHA: rate-limit decisions are made in Redis again. A liveness bound:
        fails the test after `timeout_s`."""
        before = self.evalsha_calls()
        deadline = time.monotonic() + timeout_s
        while self.evalsha_calls() == before:
            if time.monotonic() > deadline:
                pytest.fail(f"rate-limit decisions did not return to Redis within {timeout_s:g} s")
            send()
            time.sleep(0.2)

    def _answers_ping(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisSleep:
    """`server.debug_sleep(seconds)` in a thread, started at once; `woke` is when the server
    answered again."""

    def __init__(self, server: RedisServer, seconds: float):
        self.woke = float("inf")
        self._thread = threading.Thread(target=self._run, args=(server, seconds), daemon=True)
        self._thread.start()
        time.sleep(0.2)  # the server is asleep from here on

    def _run(self, server: RedisServer, seconds: float) -> None:
        self.woke = server.debug_sleep(seconds)

    def join(self) -> None:
        self._thread.join(timeout=30)
