"""Agents the tests serve, importable as `agents_for_tests:NAME` by subprocess servers."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_runtime import current_run, emit_event


async def upper(input: Any) -> Any:
    """Upper-cases text; echoes anything else."""
    return input.upper() if isinstance(input, str) else input


async def counting_stream(input: Any):
    """Streams `input` (a number) chunks: 0, 1, 2, ..."""
    for i in range(int(input)):
        yield f"{i} "


async def paced_stream(input: Any):
    """Streams `input` (a number) chunks 2 ms apart: a run that lasts long enough to be watched live."""
    for i in range(int(input)):
        await asyncio.sleep(0.002)
        yield f"{i} "


async def slow(input: Any) -> Any:
    """Sleeps `input` seconds (a number or numeric text), then says so."""
    await asyncio.sleep(float(input))
    return f"slept {float(input):g}s"


async def whoami(input: Any) -> Any:
    """The run context as it is seen inside the agent."""
    run = current_run()
    emit_event("seen", {"user": run.user_id})
    return {"run_id": run.run_id, "user_id": run.user_id, "session_id": run.session_id,
            "metadata": dict(run.metadata)}


async def failing(input: Any) -> Any:
    raise ValueError("secret internal detail")
