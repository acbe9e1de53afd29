"""The Python client (async and sync) against real servers on loopback: inputs and
outputs, streaming, errors, retries with pushback, bearer token, TLS and mTLS."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

import interop_agents
from certs import CA
from conftest import wait_until
from agent_runtime import Blob, SessionManager
from agent_runtime.client import (AgentRuntimeClient, CallError, ClientConfig, RunResult,
                                  SyncAgentRuntimeClient)
from agent_runtime._proto.agent_runtime.v1 import runtime_pb2
from agent_runtime.grpc.servicer import SERVICE_NAME, AgentRuntimeServicer, method_handlers


@pytest.mark.parametrize("value", ["hello", {"a": [1, 2.5, None, True]}, [1, "two"], 3, None])
async def test_text_and_structured_inputs_reach_the_agent_as_python(serve, value):
    server = await serve(interop_agents.whoami)
    async with AgentRuntimeClient(server.address) as client:
        result = await client.invoke(value, metadata={"k": "v"}, user_id="u1", session_id="s1")
    assert isinstance(result, RunResult)
    assert result.output["input"] == value
    assert result.output["metadata"] == {"k": "v"}
    assert (result.agent, result.session_id, len(result.run_id)) == ("whoami", "s1", 32)


async def test_binary_round_trip_through_echo(serve):
    server = await serve()
    async with AgentRuntimeClient(server.address) as client:
        assert (await client.invoke(b"\x00\xff")).output == Blob(b"\x00\xff")
        assert (await client.invoke(Blob(b"gif", "image/gif"))).output == Blob(b"gif", "image/gif")


async def test_stream_yields_started_chunks_and_ended(serve):
    server = await serve()
    async with AgentRuntimeClient(server.address) as client:
        events = [event async for event in client.stream("hello streaming world")]
    assert [e.kind for e in events] == ["started", "chunk", "chunk", "chunk", "ended"]
    assert "".join(e.chunk for e in events if e.kind == "chunk") == "hello streaming world"
    assert [e.seq for e in events] == list(range(5))
    assert events[-1].data["status"] == "ok" and events[-1].data["output"] == "hello streaming world"
    assert len({e.run_id for e in events}) == 1


async def test_stream_of_a_failed_run_raises_after_its_ended_event(serve):
    server = await serve(interop_agents.broken)
    seen = []
    async with AgentRuntimeClient(server.address) as client:
        with pytest.raises(CallError) as info:
            async for event in client.stream("x"):
                seen.append(event)
    assert seen[-1].kind == "ended" and seen[-1].data["status"] == "error"
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert info.value.run_id == seen[-1].run_id
    assert "secret" not in info.value.message


async def test_errors_carry_code_message_and_run_id(serve):
    server = await serve()
    async with AgentRuntimeClient(server.address) as client:
        with pytest.raises(CallError) as info:
            await client.invoke("x", agent="nope")
        assert info.value.code is grpc.StatusCode.NOT_FOUND
        assert "no agent named 'nope'" in str(info.value)
        with pytest.raises(CallError) as info:
            await client.invoke({"tool": "nope"})
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT and len(info.value.run_id) == 32
        with pytest.raises(TypeError, match="no wire form"):
            await client.invoke(object())


async def test_list_agents_and_health(serve):
    server = await serve()
    async with AgentRuntimeClient(server.address) as client:
        [agent] = await client.list_agents()
        assert (agent.name, agent.streaming) == ("echo", True)
        assert agent.tools[0]["name"] == "reverse"
        assert await client.health() == "SERVING"
        assert await client.health(SERVICE_NAME) == "SERVING"
        with pytest.raises(CallError) as info:
            await client.health("no.such.Service")
        assert info.value.code is grpc.StatusCode.NOT_FOUND


async def test_over_capacity_without_retries_reports_the_retry_hint(serve):
    server = await serve(interop_agents.slow, max_concurrency=1, max_queue=0)
    async with AgentRuntimeClient(server.address, max_attempts=1) as client:
        holder = asyncio.ensure_future(client.invoke("1"))
        await wait_until(lambda: server.manager.admission.in_use, "the slot taken")
        with pytest.raises(CallError) as info:
            await client.invoke("0")
        assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.retry_after > 0
        assert (await holder).output == "slept 1s"


async def test_a_call_refused_over_capacity_is_retried_until_a_slot_is_free(serve):
    """A refusal is a status without a reply (trailers only), so gRPC's retries take it."""
    server = await serve(interop_agents.slow, max_concurrency=1, max_queue=0)
    async with AgentRuntimeClient(server.address, max_attempts=5, initial_backoff=0.2, max_backoff=0.5) as client:
        holder = asyncio.ensure_future(client.invoke("0.4"))
        await wait_until(lambda: server.manager.admission.in_use, "the slot taken")
        assert (await client.invoke("0")).output == "slept 0s"
        assert (await holder).output == "slept 0.4s"
    assert server.manager.admission.rejected["slow"] >= 1


async def test_a_run_that_started_is_never_retried(serve, capfd):
    """A provider outage after the agent ran is UNAVAILABLE, which the retry policy
    retries; the server's negative pushback stops that: the agent runs once a call."""
    server = await serve(interop_agents.flaky_provider)
    async with AgentRuntimeClient(server.address, max_attempts=5, initial_backoff=0.01, max_backoff=0.02) as client:
        with pytest.raises(CallError) as info:
            await client.invoke("unary")
        with pytest.raises(CallError):
            async for _ in client.stream("streamed"):
                pass
    assert info.value.code is grpc.StatusCode.UNAVAILABLE and len(info.value.run_id) == 32
    assert info.value.retry_after is None
    ran = capfd.readouterr().err
    assert (ran.count("ran unary"), ran.count("ran streamed")) == (1, 1)
    assert server.manager.admission.in_use == 0


async def test_sync_client_does_what_the_async_one_does(serve):
    server = await serve()

    def use() -> tuple:
        with SyncAgentRuntimeClient(server.address) as client:
            result = client.invoke({"tool": "reverse", "arguments": {"text": "abc"}})
            kinds = [event.kind for event in client.stream("a b")]
            try:
                client.invoke("x", agent="nope")
            except CallError as exc:
                code = exc.code
            return result.output, kinds, client.health(), [a.name for a in client.list_agents()], code

    output, kinds, health, names, code = await asyncio.to_thread(use)
    assert output == "cba"
    assert kinds == ["started", "chunk", "chunk", "ended"]
    assert (health, names, code) == ("SERVING", ["echo"], grpc.StatusCode.NOT_FOUND)


def test_sync_client_close_is_idempotent():
    client = SyncAgentRuntimeClient("127.0.0.1:1")
    client.close()
    client.close()


def test_config_is_checked_and_builds_a_service_config():
    with pytest.raises(ValueError, match="max_attempts"):
        ClientConfig(max_attempts=6)
    with pytest.raises(ValueError, match="client_cert and client_key"):
        ClientConfig(client_cert="c.pem")
    with pytest.raises(ValueError, match="token"):
        ClientConfig(token="a\nb")
    config = ClientConfig("dns:///agents.ns.svc.cluster.local:50051")
    service_config = config.service_config()
    assert service_config["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = service_config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
    assert "methodConfig" not in ClientConfig(max_attempts=1).service_config()
    assert dict(config.channel_options())["grpc.keepalive_time_ms"] == 60_000


class Refuse(grpc.aio.ServerInterceptor):
    """Answers RESOURCE_EXHAUSTED with a retry pushback to the first `times` calls."""

    def __init__(self, times: int, pushback_ms: int) -> None:
        self.times, self.pushback_ms, self.attempts = times, pushback_ms, []

    async def intercept_service(self, continuation, details):
        self.attempts.append(time.monotonic())
        if len(self.attempts) > self.times:
            return await continuation(details)

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy",
                                trailing_metadata=(("grpc-retry-pushback-ms", str(self.pushback_ms)),))

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture
async def refusing_server():
    """The AgentRuntime servicer behind an interceptor that refuses the first calls."""
    servers = []

    async def start(refuse: Refuse) -> str:
        server = grpc.aio.server(interceptors=[refuse])
        handlers = method_handlers(AgentRuntimeServicer(SessionManager(interop_agents.whoami)))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(None)


async def test_retries_honour_the_servers_pushback(refusing_server):
    refuse = Refuse(times=2, pushback_ms=300)
    address = await refusing_server(refuse)
    async with AgentRuntimeClient(address, initial_backoff=0.01, max_backoff=0.02) as client:
        result = await client.invoke("x")
    assert result.output["input"] == "x"
    assert len(refuse.attempts) == 3
    gaps = [b - a for a, b in zip(refuse.attempts, refuse.attempts[1:])]
    assert min(gaps) >= 0.3  # waited as the server asked, not the client's own 10-20 ms backoff


async def test_retries_give_up_after_max_attempts(refusing_server):
    refuse = Refuse(times=10, pushback_ms=1)
    address = await refusing_server(refuse)
    async with AgentRuntimeClient(address, max_attempts=3) as client:
        with pytest.raises(CallError) as info:
            await client.invoke("x")
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(refuse.attempts) == 3


async def test_bearer_token_is_sent(serve):
    server = await serve(interop_agents.whoami, auth_token="s3cret")
    async with AgentRuntimeClient(server.address, token="s3cret") as client:
        assert (await client.invoke("x")).output["input"] == "x"
    for token in (None, "wrong"):
        async with AgentRuntimeClient(server.address, token=token) as client:
            with pytest.raises(CallError) as info:
                await client.invoke("x")
            assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
            assert await client.health() == "SERVING"  # health is exempt: probes carry no token


async def test_mutual_tls(serve, tmp_path):
    server_ca, client_ca = CA("server-ca"), CA("client-ca")
    cert, key = server_ca.issue("localhost").write(tmp_path, "server")
    client_cert, client_key = client_ca.issue("client", server=False).write(tmp_path, "client")
    (tmp_path / "server-ca.pem").write_bytes(server_ca.pem)
    (tmp_path / "client-ca.pem").write_bytes(client_ca.pem)
    server = await serve(interop_agents.whoami, tls_cert=str(cert), tls_key=str(key),
                         tls_client_ca=str(tmp_path / "client-ca.pem"))
    ca = str(tmp_path / "server-ca.pem")
    async with AgentRuntimeClient(server.address, ca_cert=ca, client_cert=str(client_cert),
                                  client_key=str(client_key)) as client:
        assert (await client.invoke("over tls")).output["input"] == "over tls"
    async with AgentRuntimeClient(f"localhost:{server.port}", ca_cert=ca, server_name="localhost",
                                  client_cert=str(client_cert), client_key=str(client_key)) as client:
        assert await client.health() == "SERVING"
    for settings in ({"ca_cert": ca}, {}, {"tls": True}):  # no client certificate, plaintext, wrong CA
        async with AgentRuntimeClient(server.address, max_attempts=1, **settings) as client:
            with pytest.raises(CallError) as info:
                await client.invoke("x", timeout=10)
            assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_call_error_says_code_message_and_run():
    assert str(CallError(grpc.StatusCode.INTERNAL, "boom", run_id="abc")) == "INTERNAL: boom (run abc)"


async def test_run_timeout_bounds_the_run(serve):
    server = await serve(interop_agents.slow)
    async with AgentRuntimeClient(server.address) as client:
        with pytest.raises(CallError) as info:
            await client.invoke("30", run_timeout=0.2, timeout=30)
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.2s" in info.value.message


async def test_sync_stream_abandoned_midway_ends_the_run(serve):
    server = await serve(interop_agents.slow, max_concurrency=1, max_queue=0)

    def abandon() -> str:
        with SyncAgentRuntimeClient(server.address) as client:
            for event in client.stream("60", timeout=60):
                assert event.kind == "started"
                break  # the generator is closed here: the call and its run are cancelled
            return client.invoke("0", timeout=30).output  # admitted: the only slot is free again

    assert await asyncio.to_thread(abandon) == "slept 0s"


async def test_every_invoke_carries_its_own_idempotency_key():
    """A retry of the same call resends the same request, so a key made per call can only
    ever attach the retry to the call's own run."""
    keys: list[str] = []

    async def invoke(request: Any, context: Any) -> runtime_pb2.InvokeResponse:
        keys.append(request.idempotency_key)
        return runtime_pb2.InvokeResponse(run_id="r", output=runtime_pb2.Payload(text="ok"))

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("agent_runtime.v1.AgentRuntime", {
        "Invoke": grpc.unary_unary_rpc_method_handler(
            invoke, request_deserializer=runtime_pb2.InvokeRequest.FromString,
            response_serializer=runtime_pb2.InvokeResponse.SerializeToString)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AgentRuntimeClient(f"127.0.0.1:{port}") as client:
            await client.invoke("a")
            await client.invoke("b")
            await client.invoke("c", idempotency_key="mine")
            await client.invoke("d", idempotency_key="")
    finally:
        await server.stop(None)
    assert len(keys[0]) == 32 and len(keys[1]) == 32 and keys[0] != keys[1]
    assert keys[2:] == ["mine", ""]


async def test_a_repeated_key_attaches_to_the_first_run(serve, capfd):
    server = await serve(interop_agents.flaky_provider)
    async with AgentRuntimeClient(server.address) as client:
        with pytest.raises(CallError) as first:
            await client.invoke("once", idempotency_key="k-1")
        with pytest.raises(CallError) as again:
            await client.invoke("once", idempotency_key="k-1")
    assert first.value.run_id and again.value.run_id == first.value.run_id
    assert capfd.readouterr().err.count("ran once") == 1
