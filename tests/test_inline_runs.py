"""A run awaited with `result()` executes in its caller's task (the inline driver,
`_inline.drive`): it must behave as a run in a task of its own does. Its own context
and current task, the agent's own cancel scopes left alone, the caller's cancellation
passed on, and an agent that ignores that cancellation abandoned with its slot freed.
Each test also runs with a task per run (`AGENT_RUNTIME_INLINE_RUNS=false`)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import subprocess
import sys

import anyio
import pytest

from agent_runtime import AgentError, EventType, RunStatus, SessionManager, current_run
from agent_runtime.config import ConfigError
from conftest import ROOT, wait_until
from test_run_containment import Recorder

pytestmark = pytest.mark.usefixtures("run_mode")  # inline and task-per-run

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="caller")


async def cancel_caller_once_started(manager: SessionManager, started: asyncio.Event) -> None:
    """Await a run in a caller task of its own, cancel that caller once the agent has
    started, and wait for the caller to end."""
    async def call():
        async with manager.session() as session, session.run("x") as runner:
            return await runner.result()

    caller = asyncio.ensure_future(call())
    await started.wait()
    caller.cancel()
    await caller


async def test_agent_has_its_own_context_and_one_current_task(run_mode):
    seen = []

    async def agent(input):
        seen.append((asyncio.current_task(), current_run().run_id, marker.get()))
        marker.set("agent")
        await asyncio.sleep(0)
        seen.append((asyncio.current_task(), current_run().run_id, marker.get()))
        return input

    manager = SessionManager(agent)
    async with manager.session() as session, session.run("x") as runner:
        assert await runner.result() == "x"
    assert seen[0][0] is seen[1][0]
    assert (seen[0][0] is asyncio.current_task()) is (run_mode == "inline")  # else a task of its own
    assert seen[0][1] == seen[1][1] == runner.run_id
    assert [s[2] for s in seen] == ["caller", "agent"]
    assert marker.get() == "caller" and current_run() is None  # nothing leaks into the caller


async def test_agents_own_cancel_scopes_are_not_the_callers_cancellation():
    async def agent(input):
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        except TimeoutError:
            pass
        with anyio.move_on_after(0.01):
            await anyio.sleep(10)
        async with asyncio.timeout(0.01):  # cancelled, and slow to clean up
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.1)
                return "cleaned up"
        return "unreachable"

    # A cancellation outstanding for `cancel_grace` counts as ignored, whoever's it is:
    # the clean-up here takes less.
    manager = SessionManager(agent, cancel_grace=1.0)
    async with manager.session() as session, session.run("x") as runner:
        assert await runner.result() == "cleaned up"
    assert runner.status is RunStatus.OK and not runner.abandoned
    assert asyncio.current_task().cancelling() == 0


async def test_a_cancelled_caller_gets_its_cancellation_and_the_agent_is_cancelled():
    started, stopped = asyncio.Event(), asyncio.Event()

    async def agent(input):
        started.set()
        try:
            await asyncio.sleep(10)
        finally:
            stopped.set()

    recorder = Recorder()
    manager = SessionManager(agent, sinks=[recorder])

    with pytest.raises(asyncio.CancelledError):
        await cancel_caller_once_started(manager, started)
    assert stopped.is_set() and manager.admission.in_use == 0
    assert [e.data["status"] for e in recorder.of(EventType.RUN_END)] == [RunStatus.CANCELLED]


async def test_agent_ignoring_its_callers_cancellation_is_abandoned(caplog):
    started, release = asyncio.Event(), asyncio.Event()
    cancels = []

    async def agent(input):
        started.set()
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancels.append(1)
        return "finally"

    recorder = Recorder()
    manager = SessionManager(agent, max_concurrency=1, cancel_grace=0.1, sinks=[recorder])
    caplog.set_level(logging.ERROR, "agent_runtime.run")

    with pytest.raises(asyncio.CancelledError):  # freed at the grace, not when the agent ends
        await asyncio.wait_for(cancel_caller_once_started(manager, started), 5)
    assert cancels == [1]  # the wake-up of the caller did not disturb the agent again
    assert manager.admission.in_use == 0 and manager.abandoned == 1
    assert "ignored cancellation" in caplog.text
    release.set()
    await wait_until(lambda: not manager.abandoned, "the abandoned agent to end")
    assert manager.abandoned == 0
    assert [e.data["status"] for e in recorder.of(EventType.RUN_END)] == [RunStatus.CANCELLED]


async def test_result_awaited_again_gives_the_same_outcome():
    async def fails(input):
        raise ValueError("no")

    async def succeeds(input):
        return await asyncio.sleep(0, "ok")

    for agent, expected in ((succeeds, "ok"), (fails, AgentError)):
        manager = SessionManager(agent)
        async with manager.session() as session, session.run("x") as runner:
            if expected is AgentError:
                with pytest.raises(AgentError) as first:
                    await runner.result()
                with pytest.raises(AgentError) as second:
                    await runner.result()
                assert first.value is second.value
            else:
                assert await runner.result() == await runner.result() == expected


async def test_concurrent_result_of_one_run_is_refused():
    gate = asyncio.Event()

    async def agent(input):
        await gate.wait()
        return input

    manager = SessionManager(agent)
    async with manager.session() as session, session.run("x") as runner:
        first = asyncio.ensure_future(runner.result())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already being awaited"):
            await runner.result()
        gate.set()
        assert await first == "x"


async def test_result_admits_a_run_not_entered_and_frees_the_slot():
    """`await runner.result()` without `async with` (how a unary call runs) admits the run
    for as long as it runs, queueing as `async with` does."""
    release = asyncio.Event()

    async def agent(input):
        await release.wait()
        return input.upper()

    manager = SessionManager(agent, max_concurrency=1, max_queue=1)
    session = manager.session()
    first, second = session.run("a"), session.run("b")
    calls = [asyncio.ensure_future(first.result()), asyncio.ensure_future(second.result())]
    await wait_until(lambda: manager.admission.in_use == 1 and manager.admission.waiting == 1,
                     "one run running and one queued")
    release.set()
    assert await asyncio.gather(*calls) == ["A", "B"]
    assert second.queue_wait > 0
    assert manager.admission.in_use == 0 and not manager.runs


async def test_result_refused_holds_nothing():
    from agent_runtime import Overloaded

    hold = asyncio.Event()

    async def agent(input):
        await hold.wait()
        return input

    manager = SessionManager(agent, max_concurrency=1, max_queue=0)
    session = manager.session()
    holder = asyncio.ensure_future(session.run("a").result())
    await wait_until(lambda: manager.admission.in_use == 1, "the first run to hold the slot")
    refused = session.run("b")
    with pytest.raises(Overloaded, match="over capacity"):
        await refused.result()
    assert manager.admission.in_use == 1 and list(manager.runs) != [refused.run_id]
    hold.set()
    assert await holder == "a"
    assert manager.admission.in_use == 0 and manager.admission.rejected == {"agent": 1}


async def test_a_run_is_admitted_once():
    """A second result() gives the first one's outcome and takes no second slot; a
    second `async with` raises."""
    async def agent(input):
        return input

    manager = SessionManager(agent, max_concurrency=1)
    runner = manager.session().run("x")
    assert await runner.result() == "x"
    assert await runner.result() == "x"
    assert manager.admission.in_use == 0 and not manager.runs
    with pytest.raises(RuntimeError, match="admitted once"):
        await runner.__aenter__()
    entered = manager.session().run("y")
    async with entered:
        with pytest.raises(RuntimeError, match="admitted once"):
            await entered.__aenter__()
        assert await entered.result() == "y"
    assert manager.admission.in_use == 0 and not manager.runs


def test_an_inline_runs_setting_that_is_not_true_or_false_is_refused(monkeypatch):
    monkeypatch.setenv("AGENT_RUNTIME_INLINE_RUNS", "sometimes")
    with pytest.raises(ConfigError, match="AGENT_RUNTIME_INLINE_RUNS: 'sometimes' is not valid"):
        SessionManager(lambda input: input)
    served = subprocess.run([sys.executable, "-m", "agent_runtime", "serve", "--port", "0", "--metrics-port", "0"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert served.returncode == 2 and "AGENT_RUNTIME_INLINE_RUNS: 'sometimes'" in served.stderr
