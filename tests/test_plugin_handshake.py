"""go-plugin launch mode, driven the way Redpanda Connect's plugin host does it: start the
command, read the handshake from the first stdout line, dial, ping health `plugin`, call
InvokeAgent, then ask it to shut down through `plugin.GRPCController/Shutdown`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_runtime._proto.redpanda.runtime.v1alpha1 import agent_pb2 as pb
from agent_runtime._proto.redpanda.runtime.v1alpha1 import agent_pb2_grpc
from agent_runtime._proto.redpanda.runtime.v1alpha1 import message_pb2 as mpb
from conftest import ROOT

HANDSHAKE = re.compile(r"1\|1\|tcp\|(127\.0\.0\.1:\d+)\|grpc\n")
# What go-plugin's host puts in the plugin's environment (Connect's handshake config).
PLUGIN_ENV = {"REDPANDA_CONNECT_DYNAMIC_PLUGIN": ":blobswag:", "PLUGIN_PROTOCOL_VERSIONS": "1",
              "PLUGIN_MIN_PORT": "10000", "PLUGIN_MAX_PORT": "25000"}


@pytest.fixture
def launch():
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "agent_runtime", "serve", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env={**os.environ, **PLUGIN_ENV, **(env or {})})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def handshake(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    match = HANDSHAKE.fullmatch(line)
    assert match, f"first stdout line is not a go-plugin handshake: {line!r}; stderr: {proc.stderr.read()}"
    return match.group(1)


@pytest.mark.parametrize("how", [["--plugin-handshake"], []])
def test_handshake_dial_health_invoke_and_shutdown(launch, how):
    # the flag, or the environment variable a plugin command line can set
    proc = launch(*how, "--port", "50051", env=None if how else {"AGENT_RUNTIME_PLUGIN_HANDSHAKE": "true"})
    address = handshake(proc)
    assert not address.endswith(":50051")  # a free port, whatever was configured
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="plugin"),
                                                            timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reply = agent_pb2_grpc.AgentRuntimeStub(channel).InvokeAgent(
            pb.InvokeAgentRequest(message=mpb.Message(bytes=b"hello plugin")), timeout=10)
        assert reply.message.bytes == b"hello plugin"
        shutdown = channel.unary_unary("/plugin.GRPCController/Shutdown")
        assert shutdown(b"", timeout=10) == b""  # plugin.Empty
    assert proc.wait(15) == 0
    assert "the plugin host asked to shut down" in proc.stderr.read()


def test_sigterm_drains_the_plugin(launch):
    proc = launch("--plugin-handshake")
    handshake(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert "draining" in proc.stderr.read()


def test_plugin_with_several_agents_needs_redpanda_agent(launch):
    proc = launch("--plugin-handshake", "--agent", "agent_runtime.echo:echo_agent",
                  "--agent", "interop_agents:whoami",
                  env={"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ["PYTHONPATH"]])})
    assert proc.wait(15) == 2
    assert proc.stdout.read() == ""
    assert "name the one Redpanda's InvokeAgent runs with redpanda_agent" in proc.stderr.read()


def test_two_plugins_side_by_side(launch):
    """A host may launch several: each gets its own port and nothing else is bound."""
    first, second = launch("--plugin-handshake"), launch("--plugin-handshake", "--metrics-port", "9464")
    addresses = {handshake(first), handshake(second)}
    assert len(addresses) == 2
    for address in addresses:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="plugin"),
                                                                timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_what_agent_modules_print_does_not_break_the_handshake(launch):
    proc = launch("--plugin-handshake", "--agent", "noisy_agent:agent",
                  env={"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ["PYTHONPATH"]])})
    address = handshake(proc)
    with grpc.insecure_channel(address) as channel:
        reply = agent_pb2_grpc.AgentRuntimeStub(channel).InvokeAgent(
            pb.InvokeAgentRequest(message=mpb.Message(bytes=b"quiet")), timeout=10)
    assert reply.message.bytes == b"quiet"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert "hello from an agent module being imported" in proc.stderr.read()
