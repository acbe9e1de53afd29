"""Agents the client and interop tests serve (importable as `interop_agents:NAME` by subprocess servers)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from agent_runtime import EventType, ProviderUnavailable, current_run


async def whoami(input: Any) -> Any:
    """The input as the agent got it, with the run's metadata and the serving process id;
    `{"sleep": seconds}` makes it wait first."""
    if isinstance(input, dict) and "sleep" in input:
        await asyncio.sleep(input["sleep"])
    run = current_run()
    return {"input": input, "metadata": dict(run.metadata), "pid": os.getpid()}


async def broken(input: Any) -> Any:
    raise RuntimeError("secret internal detail")


async def flaky_provider(input: Any) -> Any:
    """Does something a caller can count (a line on stderr: `ran <input>`), then fails as
    a model-backed agent whose provider is down does: a retried call would do it again."""
    print(f"ran {input}", file=sys.stderr, flush=True)
    raise ProviderUnavailable("model provider 'test' is unavailable (HTTP 503)")


async def chatty(input: Any) -> Any:
    """Reports one LLM call, as a model-backed agent does."""
    runner = current_run().runner
    runner.emit(EventType.LLM_START, {"model": "test-model"})
    runner.emit(EventType.LLM_END, {"model": "test-model", "input_tokens": 7, "output_tokens": 3,
                                    "finish_reason": "stop"})
    return "said something"


async def slow(input: Any) -> Any:
    """Sleeps `input` seconds, then says so."""
    await asyncio.sleep(float(input))
    return f"slept {float(input):g}s"
