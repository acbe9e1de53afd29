"""The /metrics server's bounds, in process with short limits (issue 30, item 5)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from agent_runtime.metrics_http import MetricsHTTPServer


@pytest.fixture
def server():
    registry = CollectorRegistry()
    Counter("probe", "A counter to find in scrapes.", registry=registry).inc()
    started = MetricsHTTPServer(registry, "127.0.0.1", 0, timeout=0.2, max_connections=4)
    started.start()
    yield started
    started.stop()


def get(port: int, path: str = "/metrics") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read()


def test_serves_the_registry(server):
    assert b"probe_total 1.0" in get(server.port)


def test_other_paths_are_not_found(server):
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(server.port, "/secret")
    missing.value.close()
    assert missing.value.code == 404


def test_an_idle_or_half_sent_request_is_closed_at_its_timeout(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        assert sock.recv(1) == b""  # closed by the server, 0.2 s on


def test_past_the_connection_cap_the_oldest_is_closed(server):
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(6)]
    try:
        assert b"probe_total" in get(server.port)
        assert sockets[0].recv(1) == b""
    finally:
        for sock in sockets:
            sock.close()


def test_an_oversized_request_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"x" * 10_000)
        assert sock.recv(1) == b""
