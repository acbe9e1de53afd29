"""Agents the benchmark serves beside the embedded echo agent."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator


class SlowAgent:
    """Streams one chunk, then holds its run open for the number of seconds it is
    given as input (text), streaming nothing more: thousands of idle open runs."""

    name = "slow"
    streaming = True

    async def run(self, input: Any) -> AsyncIterator[str]:
        yield "started"
        await asyncio.sleep(float(input or 60))


slow = SlowAgent()
