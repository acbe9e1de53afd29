"""The seeds' snippets run with only their import lines changed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import runtime_pb2 as pb
from conftest import stub

SEEDS = Path(__file__).parent / "seeds"


def test_session_manager_seed():
    out = subprocess.run([sys.executable, str(SEEDS / "nat_session_manager.py")], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.splitlines() == [
        "Session ready for: user_123",
        "Agent Replied: Hello, help me fix my router.",
        "Hello, help me fix my router.",
    ]


async def test_runtime_server_seed_serves_until_sigterm(channel_to):
    env = {**os.environ, "AGENT_RUNTIME_PORT": "0", "AGENT_RUNTIME_METRICS_PORT": "0",
           "OPENAI_API_KEY": "unused"}
    proc = subprocess.Popen([sys.executable, str(SEEDS / "redpanda_runtime_server.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.search(r"listening on (\S+:\d+)", line)
        assert match, line + proc.stderr.read()
        channel = channel_to(match.group(1))
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        agents = (await stub(channel).ListAgents(pb.ListAgentsRequest())).agents
        assert [(a.name, a.model) for a in agents] == [("MyRuntimeAgent", "openai/gpt-3.5-turbo")]
        assert agents[0].description == "You are now accessible via gRPC. Respond clearly."
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
