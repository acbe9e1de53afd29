"""What the model-backed Agent costs over a bare `openai` SDK call.

In one process, against the tests' fake OpenAI-compatible provider (on loopback):
a bare `chat.completions.create` call, an `Agent` run through `SessionManager`
(final answer; streamed; one tool call, so two model calls), round after round in
rotating order. CPU time per call is the steadier figure on a shared machine; the
difference to the bare call is what the runtime adds (admission, events, history,
the tool loop). The fake provider's own CPU is in every figure alike.

Usage: `python -m bench.agent_loop [--rounds N] [--calls N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from .stats import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from agent_runtime import Agent, SessionManager, tool  # noqa: E402
from fake_llm import FakeLLM  # noqa: E402


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


async def measure(rounds: int, calls: int) -> dict[str, list[tuple[float, float]]]:
    """Per contender, per round: (wall ms per call, CPU ms per call)."""
    import openai

    fake = FakeLLM()
    await fake.start()
    agent = Agent(name="bench", model="openai/m", base_url=fake.base_url, api_key="k", tools=[add])
    manager = SessionManager(agent, max_concurrency=0)
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k")
    tools = [{"type": "function", "function": {"name": add.name, "description": add.description,
                                               "parameters": add.parameters}}]

    async def bare() -> None:
        fake.reply("hi")
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                             tools=tools)

    async def agent_run() -> None:
        fake.reply("hi")
        async with manager.session() as session, session.run("x") as runner:
            await runner.result()

    async def streamed() -> None:
        fake.reply("hi there")
        async with manager.session() as session, session.run("x") as runner:
            async for _ in runner.result_stream():
                pass

    async def tool_turn() -> None:
        fake.call(("add", {"a": 1, "b": 2})).reply("3")
        async with manager.session() as session, session.run("x") as runner:
            await runner.result()

    contenders: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("bare SDK call", bare), ("Agent run", agent_run), ("Agent run, streamed", streamed),
        ("Agent run, 1 tool call (2 model calls)", tool_turn)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in contenders}
    try:
        for name, call in contenders:  # warm-up: imports, pools, caches
            for _ in range(20):
                await call()
        for round_no in range(rounds):
            shift = round_no % len(contenders)
            for name, call in contenders[shift:] + contenders[:shift]:
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    await call()
                results[name].append(((time.perf_counter() - wall) / calls * 1e3,
                                      (time.process_time() - cpu) / calls * 1e3))
    finally:
        await client.close()
        await manager.aclose()
        await fake.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200, help="calls per contender per round")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.rounds, args.calls))
    base_cpu = [cpu for _, cpu in results["bare SDK call"]]
    print(f"{'':40} {'wall ms':>8} {'CPU ms':>8} {'CPU added ms':>13}")
    for name, rounds in results.items():
        added = median([cpu - base for (_, cpu), base in zip(rounds, base_cpu)])
        print(f"{name:40} {median([w for w, _ in rounds]):8.2f} {median([c for _, c in rounds]):8.2f} "
              f"{added:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
