"""A real redis-server for the store tests: started on a free loopback port in a
temporary directory (no persistence), ready once it answers PING, stopped after.

Import the fixtures into a test module: `from redis_store import redis_server  # noqa: F401`.
`history_stores` runs a test with conversations in memory and in Redis.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from conftest import free_port

READY_TIMEOUT = 10.0


class RedisServer:
    """One redis-server process; `extra` are more `--name value` arguments (say `--requirepass`)."""

    def __init__(self, directory: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/install-test-deps")
        self.port = free_port()
        self.password = extra[extra.index("--requirepass") + 1] if "--requirepass" in extra else ""
        self.log = directory / "redis.log"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(directory),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.log), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                answer = sock.recv(64)
        except OSError:
            return False
        return answer.startswith((b"+PONG", b"-NOAUTH"))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}: {log[-2000:]}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


class HistoryStores:
    """Makes history stores of one kind, `memory` or `redis` (then on its own redis-server);
    `settings` are the server settings that make a RuntimeServer use that kind."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.redis = RedisServer(directory) if kind == "redis" else None
        self.settings = {"store_url": self.redis.url} if self.redis is not None else {}
        self._stores: list[Any] = []

    def make(self, max_messages: int = 100) -> Any:
        from agent_runtime import InMemoryHistory
        from agent_runtime.store.connection import Store
        from agent_runtime.store.history import RedisHistory

        if self.redis is None:
            return InMemoryHistory(max_messages=max_messages)
        store = Store(self.redis.url)
        self._stores.append(store)
        return RedisHistory(store, max_messages=max_messages)

    async def aclose(self) -> None:
        for store in self._stores:
            await store.aclose()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture(params=["memory", "redis"])
async def history_stores(request: Any, tmp_path: Path) -> AsyncIterator[HistoryStores]:
    """Each test twice: with conversations in memory and in a real Redis."""
    stores = HistoryStores(request.param, tmp_path)
    yield stores
    await stores.aclose()


async def eventually(predicate: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    """Await `predicate()` every 10 ms until it is truthy, and return that; AssertionError
    naming `what` after `timeout` s (wait_until for conditions read from the store)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return value
