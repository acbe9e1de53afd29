"""The store settings (`--store-url`, `--store-password-file`, `--store-prefix`): a
reachable store is used, and an unreachable or wrong one stops `serve` at start with
one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent_runtime.config import ConfigError, ServerConfig
from conftest import ROOT, free_port
from redis_store import RedisServer, redis_server  # noqa: F401

SERVE = [sys.executable, "-m", "agent_runtime", "serve", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "0"]


def serve_fails(*args: str, env: dict[str, str] | None = None) -> str:
    """The one stderr line of a `serve` that must refuse to start (exit code 2)."""
    import os

    proc = subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_an_unreachable_store_stops_serve_with_one_line():
    port = free_port()
    line = serve_fails("--store-url", f"redis://127.0.0.1:{port}/0")
    assert line.startswith("agent-runtime: error: store_url: cannot use the store at "
                           f"redis://127.0.0.1:{port}/0: ")


def test_a_wrong_password_stops_serve_and_is_not_shown(tmp_path):
    server = RedisServer(tmp_path, "--requirepass", "s3cret-pw")
    try:
        line = serve_fails("--store-url", f"redis://:wrong-pw@127.0.0.1:{server.port}/0")
        missing = serve_fails("--store-url", f"redis://127.0.0.1:{server.port}/0")
    finally:
        server.stop()
    assert "cannot use the store at redis://127.0.0.1" in line and "wrong-pw" not in line
    assert "cannot use the store" in missing


def test_password_file_and_env_url_reach_a_store_with_a_password(tmp_path, server_process):
    server = RedisServer(tmp_path, "--requirepass", "s3cret-pw")
    try:
        secret = tmp_path / "password"
        secret.write_text("s3cret-pw\n")  # as a mounted Secret may end
        proc = server_process("--store-password-file", str(secret),
                              env={"AGENT_RUNTIME_STORE_URL": f"redis://127.0.0.1:{server.port}/0"})
        proc.signal()
        assert proc.wait() == 0
        assert f"sharing run state in the store at redis://127.0.0.1:{server.port}/0" in proc.proc.stderr.read()
    finally:
        server.stop()


def test_a_missing_password_file_stops_serve(tmp_path, redis_server):  # noqa: F811
    line = serve_fails("--store-url", redis_server.url, "--store-password-file", str(tmp_path / "nope"))
    assert line == f"agent-runtime: error: store_password_file: No such file or directory: {tmp_path / 'nope'}"


def test_tls_to_a_plain_store_stops_serve(redis_server):  # noqa: F811
    line = serve_fails("--store-url", f"rediss://127.0.0.1:{redis_server.port}/0")
    # a plain server waits for a command while the client waits for a TLS handshake
    assert line == (f"agent-runtime: error: store_url: the store at rediss://127.0.0.1:{redis_server.port}/0 "
                    "did not answer within 5s")


def test_the_store_url_comes_from_the_config_file(tmp_path):
    config = tmp_path / "runtime.yaml"
    config.write_text(f"server:\n  store_url: redis://127.0.0.1:{free_port()}/0\n  store_prefix: 'team-a:'\n")
    line = serve_fails("--config", str(config))
    assert "cannot use the store at redis://127.0.0.1" in line


@pytest.mark.parametrize("settings, message", [
    ({"store_url": "http://127.0.0.1:6379"}, "store_url must be a redis:// or rediss:// (TLS) URL"),
    ({"store_url": "127.0.0.1:6379"}, "store_url must be a redis:// or rediss:// (TLS) URL"),
    ({"store_password_file": "/run/secrets/pw"}, "store_password_file needs store_url"),
])
def test_bad_store_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServerConfig(**settings)


def test_a_url_that_is_no_url_stops_serve():
    line = serve_fails("--store-url", "redis://127.0.0.1:notaport/0")
    assert line.startswith("agent-runtime: error: store_url: ")
