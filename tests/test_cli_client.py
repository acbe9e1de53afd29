"""`agent-runtime invoke | agents | health` end to end: the command in a subprocess
against a server process, checking what a shell user sees (stdout, stderr, exit status)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.fixture
def server(server_process):
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ["PYTHONPATH"]])}
    return server_process("--agent", "agent_runtime.echo:echo_agent", "--agent", "interop_agents:broken",
                          "--agent", "interop_agents:whoami", "--agent", "interop_agents:flaky_provider", env=env)


def cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RUNTIME_")}
    return subprocess.run([sys.executable, "-m", "agent_runtime", *args], capture_output=True, cwd=ROOT,
                          env={**full_env, **(env or {})}, input=stdin, timeout=60)


def test_invoke_prints_the_output(server):
    done = cli("invoke", "--target", server.address, "--agent", "echo", "hello world")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hello world\n", b"")


def test_invoke_stream_prints_chunks_then_ends_the_line(server):
    done = cli("invoke", "--target", server.address, "--agent", "echo", "--stream", "-v", "one two three")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"one two three\n"
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e["event"] for e in events] == ["started", "ended"]
    assert events[-1]["status"] == "ok"


def test_invoke_json_file_is_structured_input(server, tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"tool": "reverse", "arguments": {"text": "abc"}}))
    done = cli("invoke", "--target", server.address, "--agent", "echo", f"@{request}")
    assert (done.returncode, done.stdout) == (0, b"cba\n"), done.stderr


def test_token_and_target_from_the_environment(server_process):
    server = server_process(env={"AGENT_RUNTIME_AUTH_TOKEN": "t0k"})
    done = cli("invoke", "hi", env={"AGENT_RUNTIME_TARGET": server.address, "AGENT_RUNTIME_AUTH_TOKEN": "t0k"})
    assert (done.returncode, done.stdout) == (0, b"hi\n"), done.stderr
    refused = cli("invoke", "--target", server.address, "hi")
    assert refused.returncode == 4
    assert refused.stderr.startswith(b"agent-runtime: UNAUTHENTICATED:")
    wrong = cli("invoke", "--target", server.address, "--token", "nope", "hi")
    assert wrong.returncode == 4


def test_invoke_structured_output_session_user_and_metadata(server):
    done = cli("invoke", "--target", server.address, "--agent", "whoami", "--json", '{"q": [1, 2]}',
               "--session", "s-1", "--user", "u-1", "--metadata", "tenant=acme", "-v")
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["input"] == {"q": [1, 2]} and output["metadata"] == {"tenant": "acme"}
    assert b"session s-1" in done.stderr


def test_invoke_reads_stdin(server):
    done = cli("invoke", "--target", server.address, "--agent", "echo", "@-", stdin="from stdin".encode())
    assert done.stdout == b"from stdin\n"


def test_failed_run_exits_1_with_status_and_message(server):
    done = cli("invoke", "--target", server.address, "--agent", "broken", "x")
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.startswith(b"agent-runtime: INTERNAL: agent 'broken' failed with RuntimeError")
    assert b"secret" not in done.stderr
    streamed = cli("invoke", "--target", server.address, "--agent", "broken", "--stream", "x")
    assert streamed.returncode == 1 and b"INTERNAL" in streamed.stderr


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_several_agents_and_no_agent_named_says_to_use_the_flag(server, stream):
    done = cli("invoke", "--target", server.address, *stream, "x")
    assert done.returncode == 1
    assert done.stderr == (b"agent-runtime: INVALID_ARGUMENT: this server serves several agents (echo, broken, "
                           b"whoami, flaky_provider); name one with --agent\n")


def test_unknown_agent_exits_1(server):
    done = cli("invoke", "--target", server.address, "--agent", "nope", "x")
    assert done.returncode == 1
    assert b"NOT_FOUND: no agent named 'nope'" in done.stderr


@pytest.mark.parametrize("args, message", [
    ((), b"the following arguments are required"),
    (("@/no/such/file.json",), b"cannot read input file"),
    (("--json", "{bad"), b"input is not valid JSON"),
    (("--metadata", "novalue", "x"), b"--metadata takes KEY=VALUE"),
    (("--cert", "c.pem", "x"), b"client_cert and client_key go together"),
])
def test_usage_errors_exit_2(args, message):
    done = cli("invoke", "--target", "127.0.0.1:1", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_unreachable_server_exits_3():
    done = cli("invoke", "--target", "127.0.0.1:1", "x")
    assert done.returncode == 3
    assert done.stderr.startswith(b"agent-runtime: UNAVAILABLE:")
    assert cli("health", "--target", "127.0.0.1:1").returncode == 3


def test_agents_lists_the_served_agents(server):
    done = cli("agents", "--target", server.address)
    assert done.returncode == 0
    assert [line.split(b"\t")[0] for line in done.stdout.splitlines()] == [b"echo", b"broken", b"whoami",
                                                                             b"flaky_provider"]
    as_json = json.loads(cli("agents", "--target", server.address, "--json").stdout)
    assert as_json[0]["tools"][0]["name"] == "reverse"


def test_health(server):
    done = cli("health", "--target", server.address)
    assert (done.returncode, done.stdout) == (0, b"SERVING\n")
    unknown = cli("health", "--target", server.address, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert b"NOT_FOUND" in unknown.stderr


# `python -m agent_runtime` with Ctrl-C handled as in a terminal. A process started in
# the background of a non-interactive shell (`cmd &`, as CI scripts may run the suite)
# inherits SIGINT ignored, and Python keeps it ignored: the client would never see it.
WITH_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv[0] = 'agent_runtime'; runpy.run_module('agent_runtime', run_name='__main__')")


def test_ctrl_c_cancels_the_run_and_exits_130(server_process):
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ["PYTHONPATH"]])}
    server = server_process("--agent", "interop_agents:slow", "--max-concurrency", "1", "--max-queue", "0",
                            env=env)
    proc = subprocess.Popen([sys.executable, "-c", WITH_CTRL_C, "invoke", "--target", server.address,
                             "--stream", "-v", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        first = proc.stderr.readline()
        assert json.loads(first)["event"] == "started"
        proc.send_signal(signal.SIGINT)
        code, err = proc.wait(30), proc.stderr.read()
        assert (code, b"interrupted" in err) == (130, True), err
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    # the run was cancelled and its only slot freed: the next run is admitted
    done = cli("invoke", "--target", server.address, "--timeout", "30", "0")
    assert (done.returncode, done.stdout) == (0, b"slept 0s\n"), done.stderr


def test_invoke_runs_the_agent_once_when_it_fails_after_starting(server):
    """5 attempts by default: a run that fails with a retryable status (its model provider
    is down) still ran, and its side effects (a line on the server's stderr) happen once."""
    done = cli("invoke", "--target", server.address, "--agent", "flaky_provider", "once")
    assert done.returncode == 3
    assert done.stderr.startswith(b"agent-runtime: UNAVAILABLE: model provider 'test' is unavailable")
    again = cli("invoke", "--target", server.address, "--agent", "flaky_provider", "--max-attempts", "1", "twice")
    assert again.returncode == 3
    log = server.proc.stderr.read()  # the agent printed before it failed, so before the status
    assert (log.count("ran once"), log.count("ran twice")) == (1, 1)


def test_max_attempts_out_of_range_is_a_usage_error(server):
    done = cli("invoke", "--target", server.address, "--max-attempts", "6", "hi")
    assert done.returncode == 2
    assert b"--max-attempts: invalid choice: 6" in done.stderr
