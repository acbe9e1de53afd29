"""Agents and tools that run in worker threads (plain functions) and emit events there."""

from __future__ import annotations

import time

from agent_runtime import emit_chunk, emit_event, tool


def ticker(input: str) -> str:
    """Emits `count` chunks `gap` seconds apart, each the wall-clock time it was emitted at;
    input `"count gap"`."""
    count, gap = input.split()
    for _ in range(int(count)):
        time.sleep(float(gap))
        emit_chunk(f"{time.time():.6f}")
    return "done"


@tool
def progress(steps: int, pause: float) -> str:
    """Reports its progress as custom events from its worker thread.

    Args:
        steps: how many progress events to emit
        pause: seconds between two of them (so the reader waits for each)
    """
    for step in range(steps):
        time.sleep(pause)
        emit_event("progress", {"step": step})
    return f"{steps} steps"


async def uses_progress(input: str) -> str:
    """Calls `progress`; input `"steps pause"`."""
    steps, pause = input.split()
    return await progress.invoke({"steps": int(steps), "pause": float(pause)}, call_id="call-1")
