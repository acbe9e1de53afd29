"""`/metrics` over HTTP from one thread and a selector, bounded against slow or idle clients.

prometheus_client's own server starts a thread per connection and waits on it without a
timeout: 2,000 half-sent requests held 510-659 threads and descriptors for good, and
its listen backlog of 5 stalled a scrape 1.4 s (issue 30). Here every connection
gets `TIMEOUT` seconds to send its request and as long again to take the reply, at
most `MAX_CONNECTIONS` are open (a new one closes the oldest), a request is at most
`MAX_REQUEST_BYTES`, and the body is prometheus_client's `generate_latest`.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import Any, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

logger = logging.getLogger("agent_runtime.metrics")

MAX_CONNECTIONS = 64
TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192
BACKLOG = 128


class _Connection:
    __slots__ = ("sock", "received", "reply", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.received = bytearray()
        self.reply: memoryview | None = None
        self.deadline = deadline


class MetricsHTTPServer:
    """Serves `registry` on `host:port` (0: a free port) until `stop()`."""

    def __init__(self, registry: Any, host: str, port: int, *, timeout: float = TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS,
                 documents: Mapping[str, tuple[str, bytes]] | None = None) -> None:
        """`documents` are fixed bodies served beside /metrics: path -> (content type, body)
        (the A2A agent card)."""
        self.registry = registry
        self.documents = {path.encode(): document for path, document in (documents or {}).items()}
        self.timeout = timeout
        self.max_connections = max_connections
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._connections: dict[socket.socket, _Connection] = {}  # oldest first
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="agent-runtime-metrics", daemon=True)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake_writer.send(b"\0")
        self._thread.join()
        for connection in list(self._connections.values()):
            self._close(connection)
        self._selector.close()
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()

    def _serve(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            wait = min((c.deadline for c in self._connections.values()), default=now + 3600) - now
            for key, _ in self._selector.select(max(wait, 0)):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.data is not None:
                    connection = key.data
                    if connection.reply is None:
                        self._read(connection)
                    else:
                        self._write(connection)
            now = time.monotonic()
            for connection in [c for c in self._connections.values() if c.deadline <= now]:
                self._close(connection)  # idle, half-sent, or not taking its reply

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, say: the next select tries again
                logger.warning("metrics endpoint cannot accept a connection: %s", exc)
                return
            if len(self._connections) >= self.max_connections:
                self._close(next(iter(self._connections.values())))
            sock.setblocking(False)
            connection = _Connection(sock, time.monotonic() + self.timeout)
            self._connections[sock] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        connection.received += data
        head, separator, _ = connection.received.partition(b"\r\n\r\n")
        if separator:
            self._respond(connection, bytes(head.split(b"\r\n", 1)[0]))
        elif len(connection.received) > MAX_REQUEST_BYTES:
            self._close(connection)

    def _respond(self, connection: _Connection, request_line: bytes) -> None:
        parts = request_line.split()
        method, target = (parts[0], parts[1]) if len(parts) == 3 else (b"", b"")
        content_type, body = "text/plain; charset=utf-8", b""
        if method not in (b"GET", b"HEAD"):
            status, body = "405 Method Not Allowed", b"only GET /metrics\n"
        elif (path := target.split(b"?", 1)[0]) in self.documents:
            status = "200 OK"
            content_type, body = self.documents[path]
        elif path not in (b"/metrics", b"/"):
            status, body = "404 Not Found", b"see /metrics\n"
        else:
            status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        connection.reply = memoryview(head + (b"" if method == b"HEAD" else body))
        connection.deadline = time.monotonic() + self.timeout
        self._selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.reply)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        connection.reply = connection.reply[sent:]
        if not connection.reply:
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if self._connections.pop(connection.sock, None) is None:
            return
        self._selector.unregister(connection.sock)
        connection.sock.close()
