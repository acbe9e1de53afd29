"""`agent-runtime a2a` end to end: the command in a subprocess against a server process
(and against the a2a-sdk's reference server: any A2A agent), as a shell user sees it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, free_port
from a2a_agents import reference_server


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RUNTIME_")}
    return subprocess.run([sys.executable, "-m", "agent_runtime", "a2a", *args], capture_output=True, cwd=ROOT,
                          env=env, timeout=60)


async def acli(*args: str) -> subprocess.CompletedProcess:
    """`cli` without blocking the loop an in-process server runs on."""
    return await asyncio.to_thread(cli, *args)


@pytest.fixture
def server(server_process):
    return server_process("--agent", "agent_runtime.echo:echo_agent", "--agent", "a2a_agents:ask_name",
                          "--agent", "a2a_agents:words")


def test_sends_a_message_and_prints_the_answer(server):
    done = cli("--target", server.address, "--agent", "echo", "hello world")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hello world\n", b"")


def test_streams_the_answer(server):
    done = cli("--target", server.address, "--agent", "words", "--stream", "-v", "one two three")
    assert (done.returncode, done.stdout) == (0, b"one two three\n"), done.stderr
    assert json.loads(done.stderr)["state"] == "TASK_STATE_COMPLETED"


def test_json_is_a_data_part(server):
    done = cli("--target", server.address, "--agent", "echo", "--json", '{"tool": "reverse", '
               '"arguments": {"text": "abc"}}')
    assert (done.returncode, done.stdout) == (0, b"cba\n"), done.stderr


def test_answers_a_question_with_task(server):
    asked = cli("--target", server.address, "--agent", "ask_name", "-v", "hi")
    assert asked.returncode == 0, asked.stderr
    lines = asked.stderr.decode().splitlines()
    task = json.loads(lines[0])
    assert task["state"] == "TASK_STATE_INPUT_REQUIRED" and lines[1] == "the agent asks: what is your name?"
    answered = cli("--target", server.address, "--task", task["task"], "--context", task["context"], "Ada")
    assert (answered.returncode, answered.stdout) == (0, b"hello Ada\n"), answered.stderr


def test_reads_the_card_from_its_url(server_process):
    metrics_port = free_port()
    server_process("--metrics-port", str(metrics_port))
    done = cli("--card", f"http://127.0.0.1:{metrics_port}", "--stream", "via the card")
    assert (done.returncode, done.stdout) == (0, b"via the card\n"), done.stderr


def test_errors_have_invokes_exit_codes(server):
    unknown = cli("--target", server.address, "--agent", "nobody", "x")
    assert unknown.returncode == 1 and unknown.stderr.startswith(b"agent-runtime: NOT_FOUND: no agent named")
    no_task = cli("--target", server.address, "--task", "nope", "x")
    assert no_task.returncode == 1 and b"no task 'nope'" in no_task.stderr
    down = cli("--target", f"127.0.0.1:{free_port()}", "--timeout", "5", "x")
    assert down.returncode == 3, down.stderr
    no_card = cli("--card", f"http://127.0.0.1:{free_port()}", "x")
    assert no_card.returncode == 3 and b"cannot read the agent card" in no_card.stderr


async def test_calls_any_a2a_agent():
    server, card, handler = await reference_server()
    try:
        done = await acli("--target", card.supported_interfaces[0].url, "--stream", "from the sdk")
        assert (done.returncode, done.stdout) == (0, b"from the sdk\n"), done.stderr
    finally:
        await handler.aclose()
        await server.stop(grace=0)
