"""The container image, built for real and run the way the rendered Deployment says
(its args, env, user, read-only root, dropped capabilities, the ConfigMap's config
file), probed as kubelet and Prometheus would, and stopped under load to prove the
drain: accepted runs complete, new runs get UNAVAILABLE, the process exits 0 before
the termination grace runs out."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.image import seconds_to_serving
from chart_render import config_file, config_mount_path, objects, one, pod_spec
from conftest import runtime_pb2, stub
from bench.container_image import (IMAGE_TAG, build_image, docker, docker_daemon, ensure_base_image, free_port,
                             image_config, run_args)

# The first test also builds the base image (debootstrap, about a minute) and the image.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

TESTS = Path(__file__).resolve().parent
SLOW_SECONDS = 2


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    with docker_daemon():
        build_image(IMAGE_TAG, ensure_base_image())
        yield IMAGE_TAG


class Pod:
    """One container started from the rendered chart, on the host network."""

    def __init__(self, image: str, tmp_path: Path, values: dict) -> None:
        self.grpc_port, self.metrics_port = free_port(), free_port()
        values = {**values, "ports": {"grpc": self.grpc_port, "metrics": self.metrics_port}}
        self.objects = objects(values)
        self.spec = pod_spec(self.objects)
        self.deployment = one(self.objects, "Deployment")["spec"]["template"]["spec"]
        # The ConfigMap as kubelet mounts it, and the slow test agent as agent code under /app.
        config_dir = tmp_path / "config"
        config_dir.mkdir(parents=True)
        (config_dir / "config.yaml").write_text(config_file(self.objects))
        mounts = [(str(config_dir), str(Path(config_mount_path(self.objects)).parent)),
                  (str(TESTS / "slow_agent.py"), "/app/slow_agent.py")]
        self.name = f"agent-runtime-test-{uuid.uuid4().hex[:8]}"
        docker(*run_args(self.spec, image, self.name, mounts))
        self.address = f"127.0.0.1:{self.grpc_port}"

    def probe(self, channel: grpc.Channel, kind: str) -> int:
        """One kubelet gRPC probe of `kind` (startupProbe, ...): the health status."""
        settings = self.deployment["containers"][0][kind]
        assert settings["grpc"]["port"] == self.grpc_port
        health = health_pb2_grpc.HealthStub(channel)
        return health.Check(health_pb2.HealthCheckRequest(service=settings["grpc"].get("service", "")),
                            timeout=settings["timeoutSeconds"]).status

    def wait_started(self) -> None:
        """Probe as the startup probe does: every periodSeconds, up to failureThreshold times."""
        settings = self.deployment["containers"][0]["startupProbe"]
        with grpc.insecure_channel(self.address) as channel:
            for _ in range(settings["failureThreshold"]):
                try:
                    if self.probe(channel, "startupProbe") == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(settings["periodSeconds"])
        raise AssertionError(f"container never became SERVING: {self.logs()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def exit_code(self) -> int:
        return int(docker("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout)

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)


@pytest.fixture
def pod(image, tmp_path) -> Iterator[callable]:
    pods: list[Pod] = []

    def start(values: dict | None = None) -> Pod:
        started = Pod(image, tmp_path / str(len(pods)), {
            "agents": ["slow_agent:slow_agent", {"ref": "agent_runtime.echo:echo_agent"}], **(values or {})})
        pods.append(started)
        started.wait_started()
        return started

    yield start
    for started in pods:
        started.remove()


def test_image_metadata(image):
    config = image_config(image)
    assert config["Entrypoint"] == ["/opt/agent-runtime/bin/agent-runtime", "serve"]
    assert config["User"] == "10001:10001"
    assert set(config["ExposedPorts"]) == {"50051/tcp", "9464/tcp"}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["AGENT_RUNTIME_HOST"] == "0.0.0.0" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    labels = config["Labels"]
    for key in ("title", "version", "licenses", "source"):
        assert labels[f"org.opencontainers.image.{key}"]
    assert re.fullmatch(r"[0-9a-f]{40}", labels["org.opencontainers.image.revision"])


def test_no_installer_or_compiler_in_the_image(image):
    check = ("import importlib.util, shutil, sys; "
             "print([m for m in ('pip', 'setuptools', 'wheel') if importlib.util.find_spec(m)], "
             "[t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t)])")
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "/opt/agent-runtime/bin/python",
                 image, "-c", check).stdout
    assert out.strip() == "[] []"


def test_runs_as_the_deployment_says(pod):
    running = pod()
    status = docker("exec", running.name, "cat", "/proc/1/status").stdout
    uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1)
    assert f"{uid}:{uid}" == running.spec.user != "0:0"
    assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE), "capabilities were not all dropped"
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE)
    refused = docker("exec", running.name, "touch", "/app/x", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    docker("exec", running.name, "touch", "/tmp/x")
    cmdline = docker("exec", running.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[-len(running.spec.args) - 1:-1] == list(running.spec.args)


def test_probes_reflection_invoke_and_metrics(pod, grpcurl):
    running = pod()
    with grpc.insecure_channel(running.address) as channel:
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert running.probe(channel, kind) == health_pb2.HealthCheckResponse.SERVING
    listed = subprocess.run([grpcurl, "-plaintext", running.address, "list"], capture_output=True, text=True,
                            timeout=30, check=True).stdout.split()
    assert {"agent_runtime.v1.AgentRuntime", "grpc.health.v1.Health"} <= set(listed)
    reply = subprocess.run(
        [grpcurl, "-plaintext", "-d", '{"agent": "echo", "input": {"text": "hello pod"}}', running.address,
         "agent_runtime.v1.AgentRuntime/Invoke"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert '"text": "hello pod"' in reply
    text = running.metrics()
    assert 'agent_runtime_runs_total{agent="echo",status="ok"} 1.0' in text
    assert "agent_runtime_concurrency_limit 8.0" in text


async def _stream_to_end(client, seconds: float, started: asyncio.Event | None = None) -> str:
    call = client.InvokeStream(runtime_pb2.InvokeRequest(agent="slow", input=runtime_pb2.Payload(text=str(seconds))))
    ended = None
    async for event in call:
        if event.HasField("started") and started is not None:
            started.set()
        if event.HasField("ended"):
            ended = event.ended
    assert ended is not None and ended.status == runtime_pb2.RUN_STATUS_OK, ended
    return ended.output.text


def _gauge(text: str, name: str, agent: str) -> float:
    match = re.search(rf'^{name}{{agent="{agent}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_docker_stop_drains_runs_in_flight(pod, channel_to):
    running = pod({"server": {"max_concurrency": 2, "drain_timeout": 20}})
    grace = running.deployment["terminationGracePeriodSeconds"]
    client = stub(channel_to(running.address))
    # Two runs hold the slots and one waits in the queue: all three are accepted work.
    runs = [asyncio.ensure_future(_stream_to_end(client, SLOW_SECONDS)) for _ in range(3)]
    deadline = time.monotonic() + 30
    while True:
        text = await asyncio.to_thread(running.metrics)
        if (_gauge(text, "agent_runtime_runs_in_flight", "slow"), _gauge(text, "agent_runtime_runs_queued", "slow")) \
                == (2, 1):
            break
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.05)

    stop = await asyncio.create_subprocess_exec("/usr/bin/docker", "stop", "--time", str(grace), running.name,
                                                stdout=asyncio.subprocess.DEVNULL)
    health = health_pb2_grpc.HealthStub(channel_to(running.address))
    while (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING:
        await asyncio.sleep(0.02)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.Invoke(runtime_pb2.InvokeRequest(agent="slow", input=runtime_pb2.Payload(text="0")))
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "draining" in refused.value.details()

    assert await asyncio.gather(*runs) == [f"done {SLOW_SECONDS}"] * 3
    assert await stop.wait() == 0
    assert running.exit_code() == 0, running.logs()  # SIGKILL at the grace's end would be 137
    assert "drained; 0 runs were cancelled" in running.logs()


def test_bench_times_a_cold_start(image):
    assert seconds_to_serving(image) > 0


async def test_runs_longer_than_the_drain_are_cancelled_and_the_process_still_exits_0(pod, channel_to):
    running = pod({"server": {"drain_timeout": 1}})
    grace = running.deployment["terminationGracePeriodSeconds"]
    client = stub(channel_to(running.address))
    started = asyncio.Event()
    run = asyncio.ensure_future(_stream_to_end(client, 600, started))
    await asyncio.wait_for(started.wait(), 30)
    stop = await asyncio.create_subprocess_exec("/usr/bin/docker", "stop", "--time", str(grace), running.name,
                                                stdout=asyncio.subprocess.DEVNULL)
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await run
    # Cancelled at the drain deadline: UNAVAILABLE, so the caller retries on another replica.
    assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "retry on another replica" in cut.value.details()
    assert await stop.wait() == 0
    assert running.exit_code() == 0, running.logs()
    assert "drained; 1 runs were cancelled" in running.logs()
