"""Connection settings Kubernetes needs: a maximum connection age (GOAWAY, so
clients behind a ClusterIP Service reconnect and spread over pods) and
keepalive, as server channel arguments."""

import asyncio

import grpc
import pytest

from agent_runtime import ConfigError, RuntimeServer, ServerConfig
from conftest import runtime_pb2, stub
from slow_agent import slow_agent


def test_settings_become_channel_arguments():
    config = ServerConfig(max_connection_age=120, max_connection_age_grace=7.5, keepalive_time=30,
                          keepalive_timeout=5, keepalive_permit_interval=15)
    options = dict(RuntimeServer(config=config).grpc_options())
    assert options["grpc.max_connection_age_ms"] == 120_000
    assert options["grpc.max_connection_age_grace_ms"] == 7_500
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 15_000
    assert options["grpc.keepalive_permit_without_calls"] == 1


def test_zero_means_never():
    config = ServerConfig(max_connection_age=0, keepalive_time=0)
    options = dict(RuntimeServer(config=config).grpc_options())
    assert "grpc.max_connection_age_ms" not in options
    assert "grpc.max_connection_age_grace_ms" not in options
    assert options["grpc.keepalive_time_ms"] == 2**31 - 1


def test_unlimited_grace_is_left_to_grpc():
    options = dict(RuntimeServer(config=ServerConfig(max_connection_age=60)).grpc_options())
    assert "grpc.max_connection_age_grace_ms" not in options


@pytest.mark.parametrize("setting", ["max_connection_age", "max_connection_age_grace", "keepalive_time",
                                     "keepalive_permit_interval"])
def test_negative_durations_are_rejected(setting):
    with pytest.raises(ConfigError, match=setting):
        ServerConfig(**{setting: -1})


def test_settings_come_from_the_environment():
    config = ServerConfig.load(environ={"AGENT_RUNTIME_MAX_CONNECTION_AGE": "90",
                                        "AGENT_RUNTIME_KEEPALIVE_TIME": "15"})
    assert (config.max_connection_age, config.keepalive_time) == (90.0, 15.0)


async def _wait_for_state(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity, timeout: float) -> None:
    async def watch() -> None:
        state = channel.get_state()
        while state is not wanted:
            await channel.wait_for_state_change(state)
            state = channel.get_state()

    await asyncio.wait_for(watch(), timeout)


async def test_aged_connection_is_closed_and_the_client_reconnects(serve, channel_to):
    server = await serve(slow_agent, max_connection_age=0.3)
    channel = channel_to(server.address)
    client = stub(channel)
    reply = await client.Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="0")))
    assert reply.output.text == "done 0"
    # GOAWAY after the maximum age: the channel leaves READY with no call failing ...
    await _wait_for_state(channel, grpc.ChannelConnectivity.IDLE, timeout=10)
    # ... and the next call opens a new connection.
    reply = await client.Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="0")))
    assert reply.output.text == "done 0"


async def test_runs_outlive_the_connection_age_without_a_grace_limit(serve, channel_to):
    server = await serve(slow_agent, max_connection_age=0.2, max_connection_age_grace=0)
    reply = await stub(channel_to(server.address)).Invoke(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="1.5")))
    assert reply.output.text == "done 1.5"


async def test_a_grace_limit_ends_runs_on_aged_connections(serve, channel_to):
    server = await serve(slow_agent, max_connection_age=0.2, max_connection_age_grace=0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel_to(server.address)).Invoke(
            runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="10")))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
