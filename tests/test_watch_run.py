"""WatchRun: a run's events from the store, replayed after a seq and followed live until
`ended`, on any replica: a watcher cut off after k events and resumed elsewhere gets
exactly the events it had not got."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

import agents_for_tests
from conftest import runtime_pb2, stub
from redis_store import RedisServer, eventually, redis_server  # noqa: F401

CUTS = 200  # randomized cut points, over RUNS runs watched at once
RUNS = 10
CHUNKS = 30


def request(text: str, **fields) -> runtime_pb2.InvokeRequest:
    return runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text=text), **fields)


def watch_request(run_id: str, after: int | None = None, **fields) -> runtime_pb2.WatchRunRequest:
    watch = runtime_pb2.WatchRunRequest(run_id=run_id, **fields)
    if after is not None:
        watch.after_seq = after
    return watch


async def stream_all(runtime, text: str, agent: str = "", **fields) -> list[runtime_pb2.InvokeEvent]:
    return [event async for event in runtime.InvokeStream(request(text, agent=agent, **fields))]


async def watch(runtime, run_id: str, after: int | None = None, **fields) -> list[runtime_pb2.InvokeEvent]:
    """Every event WatchRun sends, retrying while the run is not recorded yet."""
    async def events() -> tuple[list] | None:
        try:
            return ([event async for event in runtime.WatchRun(watch_request(run_id, after, **fields))],)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None

    return (await eventually(events, f"run {run_id} to be watchable"))[0]


async def status_of(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    return info.value


async def rest_of(call) -> list:
    """The messages still to come on a call read with read() so far."""
    rest = []
    while (message := await call.read()) is not grpc.aio.EOF:
        rest.append(message)
    return rest


def wire(events) -> list[bytes]:
    return [event.SerializeToString() for event in events]


@pytest.fixture
async def shared(redis_server, serve, channel_to):  # noqa: F811
    """An in-process server with the store on, and its stub."""
    server = await serve({"count": agents_for_tests.counting_stream, "paced": agents_for_tests.paced_stream,
                          "slow": agents_for_tests.slow}, store_url=redis_server.url)
    return server, stub(channel_to(server.address))


async def test_an_ended_run_is_replayed_from_any_seq(shared):
    _, runtime = shared
    events = await stream_all(runtime, "20", "count", user_id="u1")
    run_id = events[0].run_id
    assert [e.seq for e in events] == list(range(22))
    assert wire(await watch(runtime, run_id, user_id="u1")) == wire(events)
    for after in (0, 7, 20):
        assert wire(await watch(runtime, run_id, after, user_id="u1")) == wire(events[after + 1:])
    assert [e async for e in runtime.WatchRun(watch_request(run_id, 21, user_id="u1"))] == []


async def test_a_live_run_is_followed_until_it_ends(shared):
    _, runtime = shared
    owner = runtime.InvokeStream(request(str(CHUNKS), agent="paced"))
    started = await owner.read()
    watched = asyncio.ensure_future(watch(runtime, started.run_id))
    rest = await rest_of(owner)
    assert wire(await watched) == wire([started, *rest])
    assert rest[-1].ended.status == runtime_pb2.RUN_STATUS_OK


async def test_watch_run_errors(shared, serve, channel_to):
    server, runtime = shared
    events = await stream_all(runtime, "3", "count", user_id="alice")
    run_id = events[0].run_id
    await watch(runtime, run_id, user_id="alice")
    for bad, code in ((watch_request(run_id, user_id="bob"), grpc.StatusCode.NOT_FOUND),
                      (watch_request("0" * 32), grpc.StatusCode.NOT_FOUND),
                      (watch_request(""), grpc.StatusCode.INVALID_ARGUMENT)):
        assert (await status_of(runtime.WatchRun(bad))).code() == code
    bare = await serve(agents_for_tests.upper)  # no store
    error = await status_of(stub(channel_to(bare.address)).WatchRun(watch_request(run_id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "WatchRun needs the replicas to share a store (store_url)"
    garbage = channel_to(server.address).unary_stream("/agent_runtime.v1.AgentRuntime/WatchRun")
    assert (await status_of(garbage(b"\xff\xff"))).code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_events_no_longer_kept_are_out_of_range(shared):
    server, runtime = shared
    events = await stream_all(runtime, "10", "count")
    run_id = events[0].run_id
    await watch(runtime, run_id)
    await server.store.redis.xtrim(server.store.key("events", run_id), maxlen=4, approximate=False)
    assert wire(await watch(runtime, run_id, 7)) == wire(events[8:])
    error = await status_of(runtime.WatchRun(watch_request(run_id, 2)))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error.details() == f"the events of run {run_id} after seq 2 are no longer kept; the oldest kept is seq 8"


async def test_a_store_outage_ends_a_watch_with_unavailable(tmp_path, serve, channel_to):
    redis = RedisServer(tmp_path)
    server = await serve(agents_for_tests.slow, store_url=redis.url)
    runtime = stub(channel_to(server.address))
    owner = runtime.InvokeStream(request("30"))
    started = await owner.read()
    watched = await eventually(lambda: _first_event(runtime, started.run_id), "a watch to start")
    call, first = watched
    assert first.seq == 0
    redis.stop()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rest_of(call)
    error = info.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details().startswith("the run store is unavailable: ")
    owner.cancel()


async def _first_event(runtime, run_id: str):
    call = runtime.WatchRun(watch_request(run_id))
    try:
        return call, await call.read()
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def test_watchers_cut_at_random_points_resume_on_another_replica_exactly(
        redis_server, server_process):  # noqa: F811
    replicas = [server_process("--agent", "agents_for_tests:paced_stream", "--store-url", redis_server.url)
                for _ in range(2)]
    a, b = (grpc.aio.insecure_channel(replica.address) for replica in replicas)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    resumed_live = 0

    async def cut_and_resume(run_id: str, k: int) -> list[bytes]:
        """Read k events from A on a channel of its own, close that channel, resume on B."""
        nonlocal resumed_live
        channel = grpc.aio.insecure_channel(replicas[0].address)
        try:
            got = []
            call = await eventually(lambda: _first_event(stub(channel), run_id), f"run {run_id} on A")
            call, first = call
            got.append(first)
            while len(got) < k:
                got.append(await call.read())
        finally:
            await channel.close(grace=None)  # abruptly: the watch is cut mid-stream
        got = got[:k]
        rest = await watch(stub(b), run_id, got[-1].seq if got else None)
        resumed_live += bool(rest) and not any(e.HasField("ended") for e in got)
        return wire(got) + wire(rest)

    try:
        owners = [stub(a).InvokeStream(request(str(CHUNKS))) for _ in range(RUNS)]
        starts = [await owner.read() for owner in owners]
        cuts = [(run, rng.randint(0, CHUNKS + 2)) for run in range(RUNS) for _ in range(CUTS // RUNS)]
        resumed = await asyncio.gather(*(cut_and_resume(starts[run].run_id, k) for run, k in cuts))
        full = [wire([start, *await rest_of(owner)]) for start, owner in zip(starts, owners)]
    finally:
        await a.close()
        await b.close()
    for (run, k), events in zip(cuts, resumed):
        assert events == full[run], f"seed {seed}: run {run} cut after {k} events"
    assert all(len(events) == CHUNKS + 2 for events in full)
    assert resumed_live > 0, "no watcher was cut while its run was still going"
