"""Build and run the container image on a machine with no registry access.

Used by the container tests and by bench/image.py. The Docker daemon is started
when none runs (`dockerd --iptables=false --bridge=none`; containers use the host
network); the base image is made with debootstrap from the Debian archive apt
already uses and imported once, then found again by its tag; the image is built
with BuildKit from the repository's Dockerfile, so unchanged layers are reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
# Debian's client (20.10) drives BuildKit with DOCKER_BUILDKIT=1; a newer client earlier on
# PATH may lack buildx and then cannot build with secrets.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
BASE_SUITE = "bookworm"  # Debian's Python 3.11, the image's Python version
BASE_TAG = f"agent-runtime-base:{BASE_SUITE}"
# One tag per checkout: test sessions of several worktrees sharing a daemon never run each other's image.
IMAGE_TAG = f"agent-runtime:test-{hashlib.sha1(str(ROOT).encode()).hexdigest()[:8]}"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
FALLBACK_MIRROR = "http://deb.debian.org/debian"


class DockerError(RuntimeError):
    """A docker, dockerd or debootstrap step failed; the message carries its output."""


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def docker(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    if check and proc.returncode != 0:
        raise DockerError(f"docker {' '.join(args[:3])} failed ({proc.returncode}): {proc.stderr[-4000:]}")
    return proc


def daemon_running() -> bool:
    return docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode == 0


@contextlib.contextmanager
def docker_daemon(timeout: float = 60) -> Iterator[None]:
    """A running Docker daemon for the block: the one that runs, or one started here
    (and stopped again at the end)."""
    if daemon_running():
        yield
        return
    log = tempfile.NamedTemporaryFile(prefix="dockerd-", suffix=".log", delete=False)
    proc = subprocess.Popen([*_sudo(), shutil.which("dockerd") or "/usr/sbin/dockerd",
                             "--iptables=false", "--bridge=none"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not daemon_running():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DockerError(f"dockerd did not start: {Path(log.name).read_text()[-4000:]}")
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        os.unlink(log.name)


def debian_mirror(sources: Path = DEBIAN_SOURCES) -> str:
    """The Debian archive named by `URIs:` in apt's deb822 sources (the first URL in
    apt's whole configuration may be another vendor's)."""
    if sources.exists():
        for match in re.finditer(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1)
    return FALLBACK_MIRROR


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=60).returncode == 0


def ensure_base_image(tag: str = BASE_TAG) -> str:
    """A minimal Debian with python3 and python3-venv, imported as `tag` unless it exists."""
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="agent-runtime-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(
            [*_sudo(), "debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             BASE_SUITE, str(rootfs), debian_mirror()], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise DockerError(f"debootstrap failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        # What no container reads: package caches, documentation, translations.
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/info", "usr/share/locale"):
            subprocess.run([*_sudo(), "rm", "-rf", str(rootfs / junk)], check=True)
        tar = subprocess.Popen([*_sudo(), "tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        docker("import", "--change", "ENV LANG=C.UTF-8", "-", tag, stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0:
            raise DockerError("tar of the debootstrap root failed")
        subprocess.run([*_sudo(), "rm", "-rf", str(rootfs)], check=True)
    return tag


def build_image(tag: str = IMAGE_TAG, base: str = BASE_TAG) -> float:
    """Build the repository's Dockerfile on `base` as `tag`; returns the seconds it took."""
    args = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", tag]
    # The checkout being built may belong to another user (git then refuses it as of
    # "dubious ownership"); reading its HEAD runs nothing of it.
    revision = subprocess.run(["git", "-c", f"safe.directory={ROOT}", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True)
    if revision.returncode == 0:  # only the final label layer changes from commit to commit
        args += ["--build-arg", f"REVISION={revision.stdout.strip()}"]
    if CA_BUNDLE.exists():  # TLS may be re-signed on the way out: pip needs the machine's CAs
        args += ["--secret", f"id=pip-ca,src={CA_BUNDLE}"]
    start = time.monotonic()
    docker(*args, str(ROOT), timeout=900)
    took = time.monotonic() - start
    # Earlier builds of the tag are left untagged: drop those of this image only.
    docker("image", "prune", "--force", "--filter", "label=org.opencontainers.image.title=agent-runtime")
    return took


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)


def image_config(tag: str) -> dict:
    return json.loads(docker("image", "inspect", "--format", "{{json .Config}}", tag).stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class PodSpec:
    """What of a rendered Deployment's container `docker run` can reproduce."""

    args: tuple[str, ...]
    env: dict[str, str]
    user: str
    read_only_root: bool
    drop_all_capabilities: bool
    no_new_privileges: bool
    writable_paths: tuple[str, ...]


def run_args(spec: PodSpec, image: str, name: str, mounts: Sequence[tuple[str, str]] = ()) -> list[str]:
    """`docker run` arguments that start `image` as the Deployment would, on the host network."""
    args = ["run", "--detach", "--name", name, "--network", "host", "--user", spec.user]
    if spec.read_only_root:
        args.append("--read-only")
    if spec.drop_all_capabilities:
        args += ["--cap-drop", "ALL"]
    if spec.no_new_privileges:
        args += ["--security-opt", "no-new-privileges"]
    for path in spec.writable_paths:
        args += ["--tmpfs", f"{path}:rw,size=64m"]
    for source, target in mounts:
        args += ["--volume", f"{source}:{target}:ro"]
    for key, value in spec.env.items():
        args += ["--env", f"{key}={value}"]
    return [*args, image, *spec.args]
