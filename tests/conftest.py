"""Shared fixtures: real servers on loopback port 0, in-process and as subprocesses.

Tests import the package from this checkout (service/), also in subprocesses,
whatever else is installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"
TESTS = ROOT / "tests"
sys.path.insert(0, str(SERVICE))
# Subprocess servers import this checkout too, and the test agents (`agents_for_tests:...`).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVICE), str(TESTS),
                                                         os.environ.get("PYTHONPATH")]))

from agent_runtime import RuntimeServer, ServerConfig  # noqa: E402
from agent_runtime._proto.agent_runtime.v1 import runtime_pb2, runtime_pb2_grpc  # noqa: E402

LISTENING = re.compile(r"listening on (\S+):(\d+)")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start in-process RuntimeServers on 127.0.0.1:0: `server = await serve(agents, **settings)`;
    every one is stopped at teardown."""
    started: list[RuntimeServer] = []

    async def start(agents: Any = None, *, sinks: Any = (), registry: Any = None,
                    tracer_provider: Any = None, meter_provider: Any = None,
                    **settings: Any) -> RuntimeServer:
        settings.setdefault("metrics_port", 0)  # tests that want /metrics pass free_port()
        config = ServerConfig(host="127.0.0.1", port=0, **settings)
        server = RuntimeServer(agents, config, sinks=sinks, registry=registry,
                               tracer_provider=tracer_provider, meter_provider=meter_provider)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.abort()


@pytest.fixture(params=["inline", "task"])
def run_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: awaited runs executing in their caller's task (the inline
    driver, the default) and each in an asyncio task of its own
    (`AGENT_RUNTIME_INLINE_RUNS=false`); subprocess servers inherit the setting."""
    monkeypatch.setenv("AGENT_RUNTIME_INLINE_RUNS", "true" if request.param == "inline" else "false")
    return request.param


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    """Open aio channels to addresses; all closed at teardown."""
    channels: list[grpc.aio.Channel] = []

    def open_channel(address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        await channel.close()


def free_port() -> int:
    """A loopback TCP port free right now (for servers that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until(predicate: Callable[[], Any], what: str = "the condition", timeout: float = 10.0) -> None:
    """Poll `predicate` every 10 ms until it holds; AssertionError naming `what` after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def wait_until_sync(predicate: Callable[[], Any], what: str = "the condition", timeout: float = 10.0) -> None:
    """`wait_until` for tests without an event loop (conditions met by other threads)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def stub(channel: grpc.aio.Channel) -> runtime_pb2_grpc.AgentRuntimeStub:
    return runtime_pb2_grpc.AgentRuntimeStub(channel)


class ServerProcess:
    """`python -m agent_runtime serve ...` as a subprocess; its address read from stdout.

    Its stderr goes to a file, not a pipe: a busy server logs a line per run, and a
    pipe nobody reads would fill up and stall it. `proc.stderr.read()` reads that
    file (all of it once the process has exited)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, **(env or {})}
        fd, self._stderr_path = tempfile.mkstemp(prefix="agent-runtime-stderr-")
        with os.fdopen(fd, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent_runtime", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--metrics-port", "0", *args],
                stdout=subprocess.PIPE, stderr=stderr, text=True, env=full_env, cwd=ROOT)
        self.proc.stderr = open(self._stderr_path)
        line = self.proc.stdout.readline()
        match = LISTENING.search(line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.address = f"{match.group(1)}:{match.group(2)}"

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        os.unlink(self._stderr_path)


@pytest.fixture
def server_process() -> Callable[..., ServerProcess]:
    procs: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(list(args), env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="session")
def grpcurl() -> str:
    path = shutil.which("grpcurl", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                          os.environ.get("PATH", "")]))
    if path is None:
        pytest.fail("grpcurl is not installed: run scripts/install-test-deps")
    return path


@pytest.fixture
async def fake_llm() -> AsyncIterator[Any]:
    """A fake OpenAI-compatible server on 127.0.0.1:0 (tests/fake_llm.py); script its replies."""
    from fake_llm import FakeLLM

    server = FakeLLM()
    await server.start()
    yield server
    await server.close()


@pytest.fixture(params=["sdk", "otlp"])
def spans(request):
    """A tracer provider and what it exported: `(provider, exporter)`, with
    `exporter.get_finished_spans()`; shut down at teardown. Every test runs twice: with
    the SDK's provider and its in-memory exporter, and with the runtime's own OTLP
    tracer (otlp_tracer) exporting to a real OTLP/gRPC receiver on loopback."""
    if request.param == "sdk":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        yield provider, exporter
        provider.shutdown()
        return
    from otlp_spans import ExportedSpans, OtlpReceiver

    from agent_runtime import otlp_tracer

    receiver = OtlpReceiver()
    provider = otlp_tracer.TracerProvider.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
                                                   {"service.name": "test"})
    yield provider, ExportedSpans(provider, receiver)
    provider.shutdown()
    receiver.stop()
