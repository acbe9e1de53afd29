"""Agents for the reliability tests, importable as `reliability_agents:NAME` by subprocess servers."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from agent_runtime import current_run, tool

MARKS_ENV = "RELIABILITY_MARKS"


async def marked_sleep(input: Any) -> Any:
    """Leaves a file named after its run id in $RELIABILITY_MARKS (so a test knows the run
    was admitted), then sleeps `input` seconds."""
    Path(os.environ[MARKS_ENV], current_run().run_id).touch()
    await asyncio.sleep(float(input))
    return f"slept {float(input):g}s"


async def ticker(input: Any):
    """Streams `count` ticks `every` seconds apart; input `count:every`."""
    count, every = str(input).split(":")
    for i in range(int(count)):
        yield f"tick {i} "
        await asyncio.sleep(float(every))


async def stubborn(input: Any) -> Any:
    """Ignores cancellation for good (a hung tool that swallows CancelledError)."""
    Path(os.environ[MARKS_ENV], current_run().run_id).touch()
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


async def loop_blocker(input: Any) -> Any:
    """Blocks the event loop for `input` seconds (CPU-bound or sync I/O by mistake)."""
    time.sleep(float(input))
    return "unblocked"


@tool
def hang(text: str) -> str:
    """Blocks its worker thread for good (a sync client call without a timeout)."""
    threading.Event().wait()
    return text


async def uses_hung_tool(input: Any) -> Any:
    """Calls the `hang` tool, which never returns."""
    Path(os.environ[MARKS_ENV], current_run().run_id).touch()
    return await hang.invoke({"text": str(input)})
