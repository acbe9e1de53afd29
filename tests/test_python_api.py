"""The Python API: every kind of agent, results, streams, events and errors."""

from __future__ import annotations

import asyncio

import pytest

from agent_runtime import (AgentError, EventType, RunStatus, SessionManager, as_agent, current_run,
                           emit_chunk, emit_event)
from agent_runtime.errors import RunCancelled

pytestmark = pytest.mark.usefixtures("run_mode")  # inline and task-per-run


class Recorder:
    def __init__(self) -> None:
        self.events = []

    def on_event(self, event) -> None:
        self.events.append(event)


async def run_once(agent, input, *, stream=False, **manager_args):
    manager = SessionManager(agent, **manager_args)
    async with manager.session(user_id="u") as session:
        async with session.run(input) as runner:
            if stream:
                return [chunk async for chunk in runner.result_stream()]
            return await runner.result()


async def async_fn(input):
    return f"async {input}"


def sync_fn(input):
    return f"sync {input} in {current_run().user_id}"


async def async_gen(input):
    for word in input.split():
        yield word


class ObjectAgent:
    name = "object-agent"

    async def run(self, input):
        return {"got": input}


class StreamingMethodAgent:
    async def run(self, input):
        yield 1
        yield 2


@pytest.mark.parametrize("agent, input, expected", [
    (async_fn, "x", "async x"),
    (sync_fn, "x", "sync x in u"),
    (async_gen, "a b c", "abc"),
    (ObjectAgent(), "x", {"got": "x"}),
    (StreamingMethodAgent(), "x", [1, 2]),
])
async def test_agent_kinds_result(agent, input, expected):
    assert await run_once(agent, input) == expected


@pytest.mark.parametrize("agent, input, chunks", [
    (async_fn, "x", ["async x"]),
    (async_gen, "a b c", ["a", "b", "c"]),
    (StreamingMethodAgent(), "x", [1, 2]),
])
async def test_agent_kinds_result_stream(agent, input, chunks):
    assert await run_once(agent, input, stream=True) == chunks


def test_agent_names_and_specs():
    assert as_agent(async_fn).name == "async_fn"
    assert as_agent(ObjectAgent()).name == "object-agent"
    assert as_agent(StreamingMethodAgent()).name == "StreamingMethodAgent"
    assert as_agent(async_gen).streaming and not as_agent(async_fn).streaming
    assert as_agent(async_fn, "renamed").name == "renamed"
    with pytest.raises(TypeError, match="not an agent"):
        as_agent(42)
    with pytest.raises(ValueError, match="two agents are named"):
        SessionManager([async_fn, async_fn])


async def test_events_in_order_with_custom_and_chunks():
    async def chatty(input):
        emit_event("thinking", {"step": 1})
        emit_chunk("par")
        emit_chunk("tial")
        return "done"

    recorder = Recorder()
    manager = SessionManager(chatty, sinks=[recorder])
    async with manager.session(user_id="u", session_id="s") as session:
        async with session.run("x", metadata={"k": "v"}) as runner:
            assert await runner.result() == "done"
    types = [e.type for e in recorder.events]
    assert types == [EventType.RUN_START, EventType.CUSTOM, EventType.CHUNK, EventType.CHUNK,
                     EventType.RUN_END]
    assert [e.seq for e in recorder.events] == [0, 1, 2, 3, 4]
    assert {e.run.run_id for e in recorder.events} == {runner.run_id}
    assert recorder.events[1].data == {"name": "thinking", "data": {"step": 1}}
    end = recorder.events[-1].data
    assert end["status"] is RunStatus.OK and end["output"] == "done" and end["duration"] >= 0
    assert recorder.events[0].run.metadata == {"k": "v"} and recorder.events[0].run.session_id == "s"


async def test_sinks_get_only_the_event_types_they_ask_for():
    async def chatty(input):
        emit_event("thinking")
        emit_chunk("a")
        return "a"

    class EndsOnly(Recorder):
        event_types = frozenset({EventType.RUN_END})

    ends, everything = EndsOnly(), Recorder()
    manager = SessionManager(chatty, sinks=[ends])
    manager.add_sink(everything)
    async with manager.session() as session:
        async with session.run("x") as runner:
            assert await runner.result() == "a"
    assert [e.type for e in ends.events] == [EventType.RUN_END]
    assert [e.type for e in everything.events] == [EventType.RUN_START, EventType.CUSTOM, EventType.CHUNK,
                                                   EventType.RUN_END]
    assert ends.events[0] is everything.events[-1] and ends.events[0].seq == 3


async def test_events_stream_for_streaming_caller():
    async def chatty(input):
        emit_chunk("a")
        return "a"

    manager = SessionManager(chatty)
    async with manager.session() as session:
        async with session.run("x") as runner:
            events = [e async for e in runner.events()]
    assert [e.type for e in events] == [EventType.RUN_START, EventType.CHUNK, EventType.RUN_END]
    assert events[0].run.streaming


async def test_event_batches_hold_what_came_since_the_reader_left_and_end_with_run_end():
    step = asyncio.Event()

    async def paced(input):
        emit_chunk("a")
        emit_chunk("b")
        await step.wait()
        emit_chunk("c")
        return "abc"

    manager = SessionManager(paced)
    batches = []
    async with manager.session() as session, session.run("x") as runner:
        async for batch in runner.event_batches():
            batches.append([e.type.value if e.type is not EventType.CHUNK else e.data["chunk"] for e in batch])
            step.set()
    assert batches[0] == ["run.start"]
    assert [item for batch in batches[1:] for item in batch] == ["a", "b", "c", "run.end"]
    assert ["a", "b"] in [batch[:2] for batch in batches] and batches[-1][-1] == "run.end"
    assert runner.status is RunStatus.OK and manager.admission.in_use == 0


async def test_a_reader_that_leaves_early_cancels_the_run():
    async def endless(input):
        while True:
            emit_chunk("x")
            await asyncio.sleep(0.001)

    manager = SessionManager(endless)
    async with manager.session() as session, session.run("x") as runner:
        events = runner.events()
        async for event in events:
            if event.type is EventType.CHUNK:
                break
        await events.aclose()  # the reader left: the run is cancelled, not left to go on
        with pytest.raises(RunCancelled):
            await runner.result()
        assert runner.status is RunStatus.CANCELLED
    assert manager.admission.in_use == 0


async def test_agent_exception_becomes_agent_error_with_run_id(caplog):
    async def broken(input):
        raise KeyError("private")

    recorder = Recorder()
    manager = SessionManager(broken, sinks=[recorder])
    async with manager.session() as session:
        async with session.run("x") as runner:
            with pytest.raises(AgentError) as err:
                await runner.result()
    assert err.value.run_id == runner.run_id and "KeyError" in err.value.message
    assert "private" not in err.value.message
    assert "KeyError: 'private'" in caplog.text and runner.run_id in caplog.text
    assert recorder.events[-1].data["status"] is RunStatus.ERROR
    assert manager.admission.in_use == 0


async def test_failing_stream_raises_after_its_chunks():
    async def half(input):
        yield "one"
        raise RuntimeError("boom")

    manager = SessionManager(half)
    got = []
    async with manager.session() as session:
        async with session.run("x") as runner:
            with pytest.raises(AgentError):
                async for chunk in runner.result_stream():
                    got.append(chunk)
    assert got == ["one"]


async def test_result_admits_itself_events_need_admission_and_a_run_starts_once():
    manager = SessionManager(async_fn)
    session = manager.session()
    assert await session.run("x").result() == "async x"
    assert manager.admission.in_use == 0 and not manager.runs
    with pytest.raises(RuntimeError, match="async with session.run"):
        async for _ in session.run("x").events():
            pass
    async with session.run("x") as runner:
        assert await runner.result() == "async x"
        assert await runner.result() == "async x"
        with pytest.raises(RuntimeError, match="already started"):
            async for _ in runner.events():
                pass


async def test_sink_failure_does_not_break_runs(caplog):
    class Broken:
        def on_event(self, event):
            raise RuntimeError("sink bug")

    assert await run_once(async_fn, "x", sinks=[Broken()]) == "async x"
    assert "event sink" in caplog.text


async def test_queue_wait_is_reported():
    gate = asyncio.Event()

    async def gated(input):
        await gate.wait()
        return input

    recorder = Recorder()
    manager = SessionManager(gated, max_concurrency=1, sinks=[recorder])

    async def one(i):
        async with manager.session() as session:
            async with session.run(i) as runner:
                return await runner.result()

    tasks = [asyncio.ensure_future(one(i)) for i in range(2)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await asyncio.gather(*tasks) == [0, 1]
    starts = [e.data["queue_wait"] for e in recorder.events if e.type is EventType.RUN_START]
    assert starts[0] == 0.0 and starts[1] > 0.02
