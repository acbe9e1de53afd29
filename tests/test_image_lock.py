"""requirements.lock (the image's dependencies) follows pyproject.toml and constraints.txt."""

import subprocess
import sys

from conftest import ROOT


def test_lock_is_current():
    proc = subprocess.run([sys.executable, "scripts/lock_image_deps.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_lock_pins_every_package_exactly():
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines and all(line.count("==") == 1 for line in lines)
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert {"grpcio", "protobuf", "uvloop", "prometheus-client"} <= names
    assert not names & {"pytest", "grpcio-tools", "helm-python-sdk"}, "a test tool leaked into the image"
