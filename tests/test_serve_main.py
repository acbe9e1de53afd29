"""`serve_main`, the Python API's process main, logs as `agent-runtime serve` does
(level and format from the config, run ends with their fields, the drain) unless the
application set up logging itself: then its setup is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import LISTENING, ROOT
from agent_runtime.client import CallError, SyncAgentRuntimeClient


def serve_and_drain(*args: str) -> str:
    """Run tests/serve_main_app.py, one failed and one good run, SIGTERM; its stderr."""
    env = {**os.environ, "AGENT_RUNTIME_PORT": "0", "AGENT_RUNTIME_METRICS_PORT": "0"}
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "serve_main_app.py"), *args],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        try:
            match = LISTENING.search(proc.stdout.readline())
            assert match, "the app did not start"
            with SyncAgentRuntimeClient(f"{match.group(1)}:{match.group(2)}", max_attempts=1) as client:
                with pytest.raises(CallError):
                    client.invoke("fail")
                assert client.invoke("x").output == "fine: x"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()
        stderr.seek(0)
        return stderr.read()


def test_serve_main_logs_run_ends_with_their_fields_and_the_drain():
    log = serve_and_drain()
    failed = next(line for line in log.splitlines() if "run ended" in line and "status=error" in line)
    assert "WARNING agent_runtime.runs: run ended run_id=" in failed and "agent=moody" in failed
    assert any("run ended" in line and "status=ok" in line for line in log.splitlines())
    assert "SIGTERM received: draining" in log


def test_serve_main_leaves_the_applications_logging_alone():
    log = serve_and_drain("configured")
    assert "APP WARNING run ended\n" in log  # the application's format, its WARNING level
    assert "status=ok" not in log and "draining" not in log
