"""Faults around the server: a client killed mid-stream, a slow reader, a storm of
short connections, an agent that blocks the event loop for a moment. The server
frees what the run held and keeps answering health checks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_runtime import EventType, RunStatus
from conftest import runtime_pb2 as pb
from conftest import stub, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING


class Ends:
    def __init__(self) -> None:
        self.statuses = []

    def on_event(self, event) -> None:
        if event.type is EventType.RUN_END:
            self.statuses.append(event.data["status"])


async def healthy(channel) -> bool:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status == SERVING


KILLED_CLIENT = textwrap.dedent("""
    import sys, grpc
    from agent_runtime._proto.agent_runtime.v1 import runtime_pb2 as pb, runtime_pb2_grpc
    channel = grpc.insecure_channel(sys.argv[1])
    call = runtime_pb2_grpc.AgentRuntimeStub(channel).InvokeStream(
        pb.InvokeRequest(agent="ticker", input=pb.Payload(text="100000:0.01")))
    for event in call:
        if event.HasField("chunk"):
            print("reading", flush=True)
""")


async def test_client_killed_mid_stream_frees_its_run(serve, channel_to):
    from reliability_agents import ticker

    ends = Ends()
    server = await serve(ticker, sinks=[ends], max_concurrency=1)
    client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, server.address], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert await asyncio.to_thread(client.stdout.readline) == "reading\n"
        assert server.manager.admission.in_use == 1
        client.send_signal(signal.SIGKILL)
        await asyncio.to_thread(client.wait, 10)
    finally:
        client.kill()
        client.wait()
        client.stdout.close()
    await wait_until(lambda: server.manager.admission.in_use == 0, "the slot to be freed")
    assert ends.statuses == [RunStatus.CANCELLED]
    reply = await stub(channel_to(server.address)).Invoke(
        pb.InvokeRequest(input=pb.Payload(text="2:0")), timeout=10)  # the slot serves again
    assert reply.output.text == "tick 0 tick 1 "


async def test_slow_reader_holds_back_the_agent_not_the_server(serve):
    total, size = 6000, 2048
    limit = 64 * 1024 * 1024  # the ended event repeats the whole output
    produced = []

    async def firehose(input):
        for i in range(total):
            produced.append(i)
            yield "x" * size

    server = await serve(firehose, max_message_bytes=limit)
    async with grpc.aio.insecure_channel(server.address,
                                         options=[("grpc.max_receive_message_length", limit)]) as channel:
        call = stub(channel).InvokeStream(pb.InvokeRequest(input=pb.Payload(text="go")), timeout=60)
        assert (await call.read()).HasField("started")
        last = -1
        while len(produced) != last:  # the reader pauses; wait until the agent stops producing
            last = len(produced)
            assert await healthy(channel)  # meanwhile the server answers, on the same connection
            await asyncio.sleep(0.2)
        assert len(produced) < total  # backpressure: the agent waits for its reader
        chunks = 0
        while (event := await call.read()) is not grpc.aio.EOF:
            chunks += event.HasField("chunk")
            ended = event
    assert chunks == total and ended.ended.status == pb.RUN_STATUS_OK
    assert server.manager.admission.in_use == 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_connection_storm(server_process):
    proc = server_process("--agent", "agent_runtime.echo:echo_agent")
    host, port = proc.address.rsplit(":", 1)
    pid = proc.proc.pid
    warm = grpc.aio.insecure_channel(proc.address)
    assert await healthy(warm)
    await warm.close()
    baseline = open_fds(pid)
    gate = asyncio.Semaphore(64)

    async def short_grpc_connection(i: int) -> bool:
        async with gate:
            async with grpc.aio.insecure_channel(proc.address, options=[("grpc.use_local_subchannel_pool", 1)]) \
                    as channel:
                if i % 2:
                    return await healthy(channel)
                reply = await stub(channel).Invoke(pb.InvokeRequest(input=pb.Payload(text="s")), timeout=10)
                return reply.output.text == "s"

    def raw_connections(count: int) -> None:
        for i in range(count):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                if i % 2:
                    sock.sendall(b"GET / HTTP/1.1\r\n\r\n" if i % 4 == 1 else os.urandom(64))

    results = await asyncio.gather(*(short_grpc_connection(i) for i in range(1500)),
                                   asyncio.to_thread(raw_connections, 1000))
    assert all(results[:-1])
    check = grpc.aio.insecure_channel(proc.address)
    assert await healthy(check)
    await check.close()
    for _ in range(500):  # closed connections are reaped shortly after
        if open_fds(pid) <= baseline + 4:
            break
        await asyncio.sleep(0.01)
    assert open_fds(pid) <= baseline + 4, (baseline, open_fds(pid))
    assert proc.proc.poll() is None


async def test_agent_blocking_the_loop_delays_but_never_fails_health_checks(serve, channel_to):
    from reliability_agents import loop_blocker, ticker

    server = await serve({"blocker": loop_blocker, "ticker": ticker})
    client = stub(channel_to(server.address))
    neighbour = client.Invoke(pb.InvokeRequest(agent="ticker", input=pb.Payload(text="20:0.01")), timeout=30)
    blocker = client.Invoke(pb.InvokeRequest(agent="blocker", input=pb.Payload(text="0.5")), timeout=30)
    checks = [await healthy(channel_to(server.address)) for _ in range(10)]
    assert checks == [True] * 10
    assert (await blocker).output.text == "unblocked"
    assert (await neighbour).output.text.count("tick") == 20
