"""Contender (d): NVIDIA NeMo Agent Toolkit's `nat serve` on its `test_echo` workflow,
plus the benchmark's status counters and stats side channel.

Runs with the toolkit's own virtualenv (see bench/deps.py), not the runtime's:
`python -m bench.servers.nat --config FILE`. It runs `nat serve` in this process
with its app wrapped in a tiny ASGI middleware that counts responses by HTTP
status (200 counted as OK), and announces the address once the port accepts.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from typing import Any

from .sidechannel import STATUS_NAMES, announce, new_counts, serve_stats

_OK = 0
_FAILED = STATUS_NAMES.index("UNKNOWN")


def counting_app(app: Any, counts: list[int]) -> Any:
    """`app` with every HTTP response counted: 2xx as OK, anything else as failed."""

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_counting(message: Any) -> None:
            if message["type"] == "http.response.start":
                counts[_OK if 200 <= message["status"] < 300 else _FAILED] += 1
            await send(message)

        await app(scope, receive, send_counting)

    return counted


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def announce_when_listening(host: str, port: int, timeout: float = 300.0) -> None:
    def wait() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1):
                    announce(host, port)
                    return
            except OSError:
                time.sleep(0.2)

    threading.Thread(target=wait, name="bench-announce", daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    from nat.cli.entrypoint import cli
    from nat.front_ends.fastapi import main as fastapi_main

    counts = new_counts()
    build = fastapi_main.get_app
    fastapi_main.get_app = lambda: counting_app(build(), counts)
    serve_stats(counts)
    port = free_port(args.host)
    announce_when_listening(args.host, port)
    return cli.main(["serve", "--config_file", args.config, "--host", args.host, "--port", str(port)],
                    prog_name="nat", standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
