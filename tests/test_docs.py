"""The docs work as written: every ```python block of README.md and docs/*.md runs
as it stands (its own imports and names, no top-level `await`) against a real server,
README's shell commands run in the virtualenv they make, and the figures README
quotes are the benchmark report's.

A block that serves (prints `listening on host:port`) is checked for health and then
drained with SIGTERM; any other block runs to the end with `AGENT_RUNTIME_TARGET`
naming a real `agent-runtime serve` (the echo agent), and must exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import LISTENING, ROOT
from agent_runtime.client import SyncAgentRuntimeClient

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(language: str) -> list[tuple[str, str]]:
    """(`file:line`, code) of every fenced block of `language`, in order."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", match.group(2)))
    return found


PYTHON_BLOCKS = blocks("python")


@pytest.mark.parametrize("where, code", PYTHON_BLOCKS, ids=[where for where, _ in PYTHON_BLOCKS])
def test_python_block_runs_as_written(where, code, server_process, tmp_path):
    server = server_process()
    script = tmp_path / "block.py"
    script.write_text(code)
    env = {**os.environ, "AGENT_RUNTIME_TARGET": server.address, "AGENT_RUNTIME_PORT": "0",
           "AGENT_RUNTIME_METRICS_PORT": "0"}
    with open(tmp_path / "stderr", "w+") as stderr:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=stderr)
        try:
            served = LISTENING.search(proc.stdout.readline())
            if served:
                with SyncAgentRuntimeClient(f"{served.group(1)}:{served.group(2)}", max_attempts=1) as client:
                    assert client.health(timeout=10) == "SERVING"
                    assert client.list_agents(timeout=10)
                proc.send_signal(signal.SIGTERM)
            proc.stdout.read()
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()
        stderr.seek(0)
        assert code == 0, f"{where} failed:\n{stderr.read()[-3000:]}"


def test_readme_shell_commands_run_in_the_virtualenv_they_make():
    """`agent-runtime`, `grpcurl` and `pip` exist only in the activated .venv (and Debian's
    Python refuses a bare `pip install`, PEP 668): the first block activates it before
    any of them, and no later block installs outside it."""
    shell = [code for where, code in blocks("sh") if where.startswith("README.md")]
    first = shell[0].splitlines()
    activate = next(i for i, line in enumerate(first) if re.match(r"(\.|source) \.venv/bin/activate\b", line))
    needs_venv = re.compile(r"^(pip|agent-runtime|grpcurl)\b")
    assert all(not needs_venv.match(line) for line in first[:activate])
    assert not any("sudo pip" in code or "--break-system-packages" in code for code in shell)


def _percent_range(text: str, label: str) -> tuple[float, float]:
    low, high = re.search(rf"([\d.]+)-([\d.]+) % {label}", text).groups()
    return float(low), float(high)


@pytest.mark.parametrize("readme_label, row", [
    ("of bare `grpc.aio`", r"\(b\) runtime / \(a\) grpc\.aio"),
    ("with Prometheus", r"\(b\+m\) runtime\+metrics / \(a\) grpc\.aio"),
    ("with every span exported", r"\(c\) runtime\+metrics\+tracing / \(a\) grpc\.aio"),
])
def test_readme_quotes_the_benchmark_reports_unary_figures(readme_label, row):
    readme = " ".join((ROOT / "README.md").read_text().split())
    report = (ROOT / "docs" / "benchmarks.md").read_text()
    measured = [float(value) for value in re.findall(rf"^\| unary c=\d+: {row}[^|]* \| ([\d.]+) %", report, re.M)]
    assert measured, f"no {row} rows in docs/benchmarks.md"
    assert _percent_range(readme, readme_label) == (min(measured), max(measured))


@pytest.mark.parametrize("path, stale", [
    ("docs/design.md", "the design notes and the seeds"),
    ("docs/design.md", "machine kind"),
    ("docs/clients.md", "(`pip install .` in this repository)"),
])
def test_stale_phrases_are_gone(path, stale):
    assert stale not in " ".join((ROOT / path).read_text().split())
