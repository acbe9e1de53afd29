"""scripts/install-test-deps plans before it installs, and never replaces a container
engine that works: Debian's docker.io conflicts with Docker CE's packages.

Run with `--dry-run` (it prints its plan and changes nothing) on a PATH of its own:
a `dpkg-query` that finds no package installed, and a `docker` that works or none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "install-test-deps"
TOOLS = ("bash", "dirname", "id", "grep")  # what the script runs besides dpkg-query and docker


def plan(tmp_path: Path, docker: str | None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    stubs = {"dpkg-query": "exit 1\n"}  # no package installed
    if docker is not None:
        stubs["docker"] = docker
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return subprocess.run([str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": str(bin_dir)})


def debian_packages(done: subprocess.CompletedProcess) -> list[str]:
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "Debian packages to install:" in line)
    return line.split(":", 2)[2].split()


def test_a_working_docker_is_left_alone(tmp_path):
    packages = debian_packages(plan(tmp_path, docker='echo "Docker version 27.3.1, build ce12230"\n'))
    assert "docker.io" not in packages
    assert {"debootstrap", "prometheus", "nghttp2-client", "valgrind"} <= set(packages)


def test_without_a_container_engine_docker_io_is_planned(tmp_path):
    assert "docker.io" in debian_packages(plan(tmp_path, docker=None))


def test_apt_get_never_removes_a_package():
    install = next(line for line in SCRIPT.read_text().splitlines() if "apt-get install" in line)
    assert "--no-remove" in install


@pytest.mark.parametrize("args", [["--bogus"], ["install"]])
def test_unknown_arguments_are_refused(args):
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr
