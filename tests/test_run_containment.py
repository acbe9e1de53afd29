"""One run's failures stay in that run: hung agents are abandoned with their slot
freed, BaseExceptions end only their own run, slots are held exactly as long as
the agent executes."""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import pytest

from agent_runtime import (AgentError, EventType, RunCancelled, RunStatus, RunTimeout,
                           SessionManager)
from conftest import runtime_pb2 as pb
from conftest import stub, wait_until

pytestmark = pytest.mark.usefixtures("run_mode")  # inline and task-per-run


class Recorder:
    def __init__(self) -> None:
        self.events = []

    def on_event(self, event) -> None:
        self.events.append(event)

    def of(self, type_):
        return [e for e in self.events if e.type is type_]


class Stubborn:
    """Ignores cancellation until `release` is set (a hung tool that swallows CancelledError)."""

    name = "stubborn"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancels = 0
        self.executing = 0

    async def run(self, input):
        self.executing += 1
        self.started.set()
        try:
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    self.cancels += 1
            from agent_runtime import emit_chunk

            emit_chunk("after the end")  # dropped: the run has ended
            return "late"
        finally:
            self.executing -= 1


async def test_agent_ignoring_cancellation_is_abandoned_after_grace(caplog):
    agent, recorder = Stubborn(), Recorder()
    manager = SessionManager(agent, max_concurrency=1, cancel_grace=0.05, sinks=[recorder])
    caplog.set_level(logging.ERROR, "agent_runtime.run")
    async with manager.session() as session:
        async with session.run("x", timeout=0.05) as runner:
            with pytest.raises(RunTimeout) as caught:
                await runner.result()
    assert caught.value.run_id == runner.run_id
    assert runner.status is RunStatus.TIMEOUT
    assert agent.executing == 1 and agent.cancels >= 1          # still executing ...
    assert manager.admission.in_use == 0 and not manager.runs  # ... but its slot is free
    assert manager.abandoned == 1
    assert any("ignored cancellation" in r.getMessage() and runner.run_id in r.getMessage()
               for r in caplog.records)
    async with manager.session() as session:  # the freed slot serves the next run
        async with session.run("y", timeout=0.05) as second:
            with pytest.raises(RunTimeout):
                await second.result()
    agent.release.set()
    await wait_until(lambda: not manager.abandoned, "the abandoned agent to end", timeout=2)
    assert manager.abandoned == 0 and agent.executing == 0
    ends = recorder.of(EventType.RUN_END)
    assert [e.data["status"] for e in ends] == [RunStatus.TIMEOUT, RunStatus.TIMEOUT]
    assert not recorder.of(EventType.CHUNK)  # events of an abandoned agent are dropped


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt, GeneratorExit])
async def test_base_exceptions_end_only_their_own_run(exc_type, caplog):
    async def agent(input):
        if input == "die":
            raise exc_type("bye")
        await asyncio.sleep(0.02)
        return input

    manager = SessionManager(agent, max_concurrency=4)
    caplog.set_level(logging.ERROR, "agent_runtime.run")

    async def one(text):
        async with manager.session() as session:
            async with session.run(text) as runner:
                return await runner.result()

    results = await asyncio.gather(one("a"), one("die"), one("b"), return_exceptions=True)
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], AgentError)
    assert exc_type.__name__ in results[1].message and results[1].run_id in results[1].message
    assert "bye" not in results[1].message  # the detail stays in the log
    assert any(r.exc_info and r.exc_info[0] is exc_type for r in caplog.records)
    assert manager.admission.in_use == 0


async def test_run_cancelled_before_its_first_step_still_ends():
    recorder = Recorder()

    async def agent(input):
        return input

    manager = SessionManager(agent, sinks=[recorder])
    async with manager.session() as session:
        async with session.run("x") as runner:
            events = runner.events()
            first = await events.__anext__()  # run.start; the agent task has not run yet
            assert first.type is EventType.RUN_START
            assert runner.cancel()
            rest = [event async for event in events]
    assert [e.type for e in rest] == [EventType.RUN_END]
    assert rest[0].data["status"] is RunStatus.CANCELLED
    assert len(recorder.of(EventType.RUN_START)) == len(recorder.of(EventType.RUN_END)) == 1
    assert manager.admission.in_use == 0


async def test_thread_agent_keeps_its_slot_until_its_thread_returns():
    gate = threading.Event()
    entered = threading.Event()

    def blocking(input):
        entered.set()
        gate.wait(10)
        return "done"

    manager = SessionManager(blocking, max_concurrency=1, cancel_grace=5)
    async with manager.session() as session:
        runner = session.run("x")
        await runner.__aenter__()
        task = asyncio.ensure_future(runner.result())
        await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        exit_task = asyncio.ensure_future(runner.__aexit__(None, None, None))
        await asyncio.sleep(0.05)
        assert manager.admission.in_use == 1  # the thread still runs: the slot is still held
        gate.set()
        await exit_task
    assert manager.admission.in_use == 0
    assert runner.status is RunStatus.CANCELLED


async def test_cancelled_exit_does_not_free_the_slot_early():
    agent = Stubborn()
    manager = SessionManager(agent, max_concurrency=1, cancel_grace=0.2)
    async with manager.session() as session:
        runner = session.run("x")
        await runner.__aenter__()
        result = asyncio.ensure_future(runner.result())
        await agent.started.wait()
        exit_task = asyncio.ensure_future(runner.__aexit__(None, None, None))
        await asyncio.sleep(0)
        exit_task.cancel()  # the caller gives up waiting for the agent to stop
        with pytest.raises(asyncio.CancelledError):
            await exit_task
        assert manager.admission.in_use == 1 and agent.executing == 1
        with pytest.raises(RunCancelled):
            await result
        assert manager.admission.in_use == 0  # freed at the grace, by abandoning the agent
        assert manager.abandoned == 1
    agent.release.set()
    await asyncio.sleep(0.01)


async def test_grpc_error_carries_safe_message_and_run_id(serve, channel_to, caplog):
    async def agent(input):
        raise RuntimeError("password=hunter2")

    server = await serve(agent)
    caplog.set_level(logging.ERROR, "agent_runtime.run")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel_to(server.address)).Invoke(pb.InvokeRequest(input=pb.Payload(text="x")))
    err = caught.value
    assert err.code() is grpc.StatusCode.INTERNAL
    run_id = dict(err.trailing_metadata())["agent-runtime-run-id"]
    assert len(run_id) == 32 and run_id in err.details()
    assert "hunter2" not in err.details()
    logged = [r for r in caplog.records if r.exc_info and run_id in r.getMessage()]
    assert logged and "hunter2" in str(logged[0].exc_info[1])


async def test_unexpected_runtime_failure_is_internal_with_run_id(serve, channel_to, caplog):
    """A failure outside the agent (here: an event sink that put a non-string trace id
    into the run's scratch) is INTERNAL with a safe message and the run id, not gRPC's
    UNKNOWN carrying the exception text."""

    class BadSink:
        def on_event(self, event):
            event.run.scratch["trace_id"] = 12345

    server = await serve(sinks=[BadSink()])
    caplog.set_level(logging.ERROR, "agent_runtime.grpc")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel_to(server.address)).Invoke(pb.InvokeRequest(input=pb.Payload(text="x")))
    err = caught.value
    assert err.code() is grpc.StatusCode.INTERNAL
    run_id = dict(err.trailing_metadata())["agent-runtime-run-id"]
    assert "12345" not in err.details() and run_id in err.details()
    assert any(r.exc_info and run_id in r.getMessage() for r in caplog.records)
    assert server.manager.admission.in_use == 0


async def test_hung_sync_tool_is_abandoned_without_starving_other_runs():
    from agent_runtime import tool

    release = threading.Event()
    threads = []

    @tool
    def lookup(key: str) -> str:
        """A blocking lookup; `hang` never answers until the test lets it."""
        threads.append(threading.current_thread().name)
        if key == "hang":
            release.wait(30)
        return key.upper()

    async def agent(input):
        return await lookup.invoke({"key": input})

    manager = SessionManager(agent, max_concurrency=2, cancel_grace=0.05)

    async def one(key, timeout=None):
        async with manager.session() as session:
            async with session.run(key, timeout=timeout) as runner:
                return await runner.result()

    try:
        hung = [asyncio.ensure_future(one("hang", timeout=0.05)) for _ in range(2)]
        for outcome in await asyncio.gather(*hung, return_exceptions=True):
            assert isinstance(outcome, RunTimeout)
        assert manager.admission.in_use == 0 and manager.abandoned == 2
        assert manager.threads.busy == 2 and manager.busy == 4
        assert await asyncio.gather(*(one(f"k{i}") for i in range(8))) == [f"K{i}" for i in range(8)]
        assert all(name.startswith("agent-runtime-worker") for name in threads)
    finally:
        release.set()
    await wait_until(lambda: not manager.busy, "the hung agents and threads to end", timeout=3)
    assert manager.busy == 0
    await manager.aclose()
