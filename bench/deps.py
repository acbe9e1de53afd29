"""What the benchmark needs beyond the runtime's virtualenv, installed on demand:
h2load (Debian nghttp2-client), valgrind for instruction counts, py-spy for
`--profile`, and the NeMo Agent Toolkit in a virtualenv of its own under the
user's cache directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

NAT_PACKAGES = ("nvidia-nat==1.9.0", "nvidia-nat-test==1.9.0", "sqlalchemy[asyncio]")
NAT_PYTHON = "python3.11"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "agent-runtime-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _ensure_debian(command: str, package: str) -> str:
    """`command`, installing Debian's `package` when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise SystemExit(f"bench: {command} is missing and apt-get is not available: install {package}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    _log(f"installing {package} ({command})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                   check=True, env=env)
    found = shutil.which(command)
    if not found:
        raise SystemExit(f"bench: {package} installed but {command} is not on PATH")
    return found


def ensure_h2load() -> str:
    """The h2load binary (Debian nghttp2-client)."""
    return _ensure_debian("h2load", "nghttp2-client")


def ensure_valgrind() -> str:
    """valgrind, whose callgrind counts instructions (bench/instructions.py)."""
    return _ensure_debian("valgrind", "valgrind")


def ensure_py_spy() -> str:
    """py-spy from PyPI, installed into this virtualenv when missing (for `--profile`)."""
    here = Path(sys.executable).parent / "py-spy"
    if not here.exists():
        _log("installing py-spy")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy>=0.4"], check=True)
    return str(here)


def nat_python() -> Path:
    """The NeMo Agent Toolkit virtualenv's python, created on first use (minutes)."""
    venv = cache_dir() / "nat-venv"
    python = venv / "bin" / "python"
    marker = venv / ".bench-installed"
    wanted = "\n".join(NAT_PACKAGES)
    if marker.exists() and marker.read_text() == wanted and python.exists():
        return python
    base = shutil.which(NAT_PYTHON)
    if base is None:
        raise SystemExit(f"bench: {NAT_PYTHON} is needed for the NeMo Agent Toolkit contender "
                         "(or pass --no-nat)")
    _log(f"creating the NeMo Agent Toolkit virtualenv in {venv} (a few minutes, once)")
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *NAT_PACKAGES], check=True)
    marker.write_text(wanted)
    return python
