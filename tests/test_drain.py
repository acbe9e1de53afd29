"""SIGTERM drains a subprocess server under a load of slow runs: health NOT_SERVING,
new calls UNAVAILABLE, every accepted run completes, exit code 0; runs past the
drain timeout are cancelled with their end events; a second signal stops at once;
agents that ignore cancellation do not keep the process alive."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import runtime_pb2 as pb
from conftest import stub
from reliability_agents import MARKS_ENV

AGENTS = ("--agent", "reliability_agents:marked_sleep", "--agent", "reliability_agents:ticker",
          "--agent", "reliability_agents:stubborn", "--agent", "reliability_agents:uses_hung_tool")
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def start(server_process, tmp_path, *args: str):
    return server_process(*AGENTS, *args, env={MARKS_ENV: str(tmp_path)})


async def wait_for(predicate, what: str, tries: int = 1000) -> None:
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def health_status(channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status


def sleep_request(seconds: float) -> pb.InvokeRequest:
    return pb.InvokeRequest(agent="marked_sleep", input=pb.Payload(text=str(seconds)))


async def stream_to_end(call) -> list:
    return [event async for event in call]


async def test_sigterm_drains_every_accepted_run_then_exits_0(server_process, channel_to, tmp_path):
    proc = start(server_process, tmp_path, "--max-concurrency", "8", "--drain-timeout", "20")
    channel = channel_to(proc.address)
    client = stub(channel)
    unary = [asyncio.ensure_future(client.Invoke(sleep_request(1.5), timeout=60)) for _ in range(6)]
    streams = [asyncio.ensure_future(stream_to_end(client.InvokeStream(pb.InvokeRequest(
        agent="ticker", input=pb.Payload(text="8:0.2")), timeout=60))) for _ in range(2)]
    await wait_for(lambda: len(list(tmp_path.iterdir())) == 6, "six admitted runs")
    proc.signal(signal.SIGTERM)
    await wait_for_async(lambda: health_status(channel), NOT_SERVING)
    try:
        await client.Invoke(sleep_request(0), timeout=10)
        raise AssertionError("a new run was admitted while draining")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE and "draining" in exc.details()
        assert "grpc-retry-pushback-ms" not in dict(exc.trailing_metadata())  # ran nothing: retryable
    replies = await asyncio.gather(*unary)
    assert [r.output.text for r in replies] == ["slept 1.5s"] * 6
    for events in await asyncio.gather(*streams):
        assert events[-1].ended.status == pb.RUN_STATUS_OK
        assert len([e for e in events if e.HasField("chunk")]) == 8
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert "drained; 0 runs were cancelled" in proc.proc.stderr.read()


async def wait_for_async(probe, wanted, tries: int = 500) -> None:
    for _ in range(tries):
        if await probe() == wanted:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {wanted!r}")


async def test_runs_past_the_drain_timeout_are_cancelled_with_end_events(server_process, channel_to, tmp_path):
    proc = start(server_process, tmp_path, "--drain-timeout", "0.3", "--cancel-grace", "2")
    client = stub(channel_to(proc.address))
    call = client.InvokeStream(pb.InvokeRequest(agent="ticker", input=pb.Payload(text="1000:0.05")), timeout=60)
    unary = asyncio.ensure_future(client.Invoke(sleep_request(60), timeout=60))
    await call.read()  # started
    await wait_for(lambda: len(list(tmp_path.iterdir())) == 1, "the unary run admitted")
    proc.signal(signal.SIGTERM)
    events = []
    try:
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
        raise AssertionError("the stream ended without an error status")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE  # the caller may run it again elsewhere
        trailers = dict(exc.trailing_metadata())
        assert trailers["agent-runtime-run-id"] == events[-1].run_id
        assert trailers["grpc-retry-pushback-ms"] == "-1"  # but no gRPC client does so on its own
    assert events[-1].ended.status == pb.RUN_STATUS_CANCELLED
    try:
        await unary
        raise AssertionError("the unary run outlived the drain")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE and "shut down" in exc.details()
        assert dict(exc.trailing_metadata())["grpc-retry-pushback-ms"] == "-1"  # it had started
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert "2 runs were cancelled" in proc.proc.stderr.read()


async def test_second_signal_stops_at_once(server_process, channel_to, tmp_path):
    proc = start(server_process, tmp_path, "--drain-timeout", "600")
    client = stub(channel_to(proc.address))
    unary = asyncio.ensure_future(client.Invoke(sleep_request(600), timeout=60))
    await wait_for(lambda: len(list(tmp_path.iterdir())) == 1, "the run admitted")
    proc.signal(signal.SIGTERM)
    await wait_for_async(lambda: health_status(channel_to(proc.address)), NOT_SERVING)
    proc.signal(signal.SIGINT)
    assert await asyncio.to_thread(proc.wait, 30) == 128 + signal.SIGINT
    try:
        await unary
        raise AssertionError("the run survived the stop")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


@pytest.mark.parametrize("agent", ["stubborn", "uses_hung_tool"])
async def test_agent_ignoring_cancellation_does_not_keep_the_process_alive(server_process, channel_to,
                                                                           tmp_path, agent):
    proc = start(server_process, tmp_path, "--drain-timeout", "0.2", "--cancel-grace", "0.2")
    unary = asyncio.ensure_future(stub(channel_to(proc.address)).Invoke(pb.InvokeRequest(
        agent=agent, input=pb.Payload(text="x")), timeout=60))
    await wait_for(lambda: len(list(tmp_path.iterdir())) == 1, "the run admitted")
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    stderr = proc.proc.stderr.read()
    assert "ignored cancellation" in stderr and "worker threads still executing" in stderr
    try:
        await unary
        raise AssertionError("the stubborn run reported success")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE
