"""A test agent that takes its time: `slow_agent` sleeps for the seconds given as
its text input (a number) and then answers `done <seconds>`.

Tests use it for runs that are in flight when something happens (a drain, a
connection reaching its maximum age); the container tests mount this file and
serve it with `--agent slow_agent:slow_agent`.
"""

from __future__ import annotations

import asyncio


class SlowAgent:
    name = "slow"

    async def run(self, input: str) -> str:
        seconds = float(input)
        await asyncio.sleep(seconds)
        return f"done {seconds:g}"


slow_agent = SlowAgent()
