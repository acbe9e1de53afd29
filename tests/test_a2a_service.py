"""lf.a2a.v1.A2AService on the server's port: bad input gets the right codes with A2A
error details and the server goes on serving; admission, auth, input-required,
health, metrics and spans as for Invoke; a switch turns it off."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
from a2a.types import a2a_pb2 as a2a
from a2a.types import a2a_pb2_grpc
from a2a.utils.proto_utils import validate_proto_required_fields
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from a2a_agents import ask_name, words
from agent_runtime import emit_event
from agent_runtime.echo import echo_agent
from conftest import free_port, wait_until

State = a2a.TaskState
TOKEN = "a2a-test-token"


def a2a_stub(channel: grpc.aio.Channel) -> a2a_pb2_grpc.A2AServiceStub:
    return a2a_pb2_grpc.A2AServiceStub(channel)


def send(text: str = "hi", *parts: a2a.Part, tenant: str = "", **fields: Any) -> a2a.SendMessageRequest:
    chosen = list(parts) if parts or text is None else [a2a.Part(text=text)]
    return a2a.SendMessageRequest(tenant=tenant, message=a2a.Message(
        message_id="m1", role=a2a.Role.ROLE_USER, parts=chosen, **fields))


def details(error: grpc.aio.AioRpcError) -> tuple[list[Any], dict[str, Any]]:
    """The ErrorInfo and RetryInfo of a status's details, and the trailing metadata."""
    metadata = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
    assert status.code == error.code().value[0] and status.message == error.details()
    found = []
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found.append(message)
    return found, metadata


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        result = await call if not hasattr(call, "__aiter__") else [r async for r in call]
        raise AssertionError(f"not refused: {result}")
    return caught.value


async def _keeps_serving(stub: a2a_pb2_grpc.A2AServiceStub) -> None:
    reply = await stub.SendMessage(send("still here"))
    assert reply.task.status.state == State.TASK_STATE_COMPLETED


@pytest.mark.parametrize("request_, code, reason", [
    (send(None), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMS"),
    (send(None, a2a.Part()), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMS"),
    (send(None, a2a.Part(url="https://example.com/x")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMS"),
    (send("x", tenant="nobody"), grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND"),
    (send("x", task_id="no-such-task"), grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND"),
])
async def test_bad_messages_are_refused_with_a2a_details(serve, channel_to, request_, code, reason):
    server = await serve()
    stub = a2a_stub(channel_to(server.address))
    for call in (stub.SendMessage(request_), stub.SendStreamingMessage(request_)):
        error = await refused(call)
        assert error.code() == code, error.details()
        [info], _ = details(error)
        assert info.reason == reason
    await _keeps_serving(stub)


async def test_unknown_tasks_and_finished_ones(serve, channel_to):
    server = await serve()
    stub = a2a_stub(channel_to(server.address))
    for call in (stub.GetTask(a2a.GetTaskRequest(id="nope")), stub.CancelTask(a2a.CancelTaskRequest(id="nope")),
                 stub.SubscribeToTask(a2a.SubscribeToTaskRequest(id="nope"))):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert details(error)[0][0].reason == "TASK_NOT_FOUND"
    done = (await stub.SendMessage(send("done"))).task
    error = await refused(stub.CancelTask(a2a.CancelTaskRequest(id=done.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error)[0][0].reason == "TASK_NOT_CANCELABLE"
    error = await refused(stub.SubscribeToTask(a2a.SubscribeToTaskRequest(id=done.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error)[0][0].reason == "UNSUPPORTED_OPERATION"
    error = await refused(stub.SendMessage(send("again", task_id=done.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = await refused(stub.ListTasks(a2a.ListTasksRequest(page_size=1000)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await refused(stub.ListTasks(a2a.ListTasksRequest(page_token="junk")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    await _keeps_serving(stub)


async def test_oversize_and_undecodable_requests(serve, channel_to):
    server = await serve(max_message_bytes=64 * 1024)
    channel = channel_to(server.address)
    stub = a2a_stub(channel)
    error = await refused(stub.SendMessage(send("x" * (100 * 1024))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    raw = channel.unary_unary("/lf.a2a.v1.A2AService/SendMessage")
    error = await refused(raw(b"\xff\xff\xff"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error)[0][0].reason == "INVALID_PARAMS"
    await _keeps_serving(stub)


async def test_push_notifications_are_unimplemented(serve, channel_to):
    server = await serve()
    stub = a2a_stub(channel_to(server.address))
    error = await refused(stub.CreateTaskPushNotificationConfig(a2a.TaskPushNotificationConfig(
        task_id="t", url="https://example.com/hook")))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "push notifications" in error.details()
    assert details(error)[0][0].reason == "PUSH_NOTIFICATION_NOT_SUPPORTED"
    card = await stub.GetExtendedAgentCard(a2a.GetExtendedAgentCardRequest())
    assert card.capabilities.push_notifications is False and card.capabilities.streaming
    validate_proto_required_fields(card)


async def test_tenant_picks_the_agent_and_is_required_with_several(serve, channel_to):
    server = await serve([echo_agent, words])
    stub = a2a_stub(channel_to(server.address))
    error = await refused(stub.SendMessage(send("x")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "several agents" in error.details()
    reply = await stub.SendMessage(send("a b", tenant="words"))
    assert [part.text for part in reply.task.artifacts[0].parts] == ["a b"]  # text chunks joined in the task
    by_metadata = send("c d")
    by_metadata.metadata.update({"agent": "words"})
    assert (await stub.SendMessage(by_metadata)).task.status.state == State.TASK_STATE_COMPLETED
    card = await stub.GetExtendedAgentCard(a2a.GetExtendedAgentCardRequest())
    assert sorted(i.tenant for i in card.supported_interfaces) == ["echo", "words"]


async def test_data_and_raw_parts_both_ways(serve, channel_to):
    server = await serve()
    stub = a2a_stub(channel_to(server.address))
    data = a2a.Part()
    data.data.struct_value.update({"n": 1, "tags": ["a"]})
    reply = await stub.SendMessage(send(None, data))
    [part] = reply.task.artifacts[0].parts
    assert part.WhichOneof("content") == "data" and part.data.struct_value["n"] == 1
    reply = await stub.SendMessage(send(None, a2a.Part(raw=b"\x00\x01", media_type="image/png")))
    [part] = reply.task.artifacts[0].parts
    assert (part.raw, part.media_type) == (b"\x00\x01", "image/png")
    reply = await stub.SendMessage(send(None, a2a.Part(text="one"), a2a.Part(text="two")))
    assert "".join(p.text for p in reply.task.artifacts[0].parts) == "one\ntwo"


async def test_input_required_then_the_answer_continues_the_task(serve, channel_to):
    server = await serve(ask_name)
    stub = a2a_stub(channel_to(server.address))
    asked = (await stub.SendMessage(send("hello"))).task
    assert asked.status.state == State.TASK_STATE_INPUT_REQUIRED
    assert asked.status.message.parts[0].text == "what is your name?"
    answered = (await stub.SendMessage(send("Ada", task_id=asked.id, context_id=asked.context_id))).task
    assert (answered.id, answered.context_id) == (asked.id, asked.context_id)
    assert answered.status.state == State.TASK_STATE_COMPLETED
    assert [p.text for p in answered.artifacts[-1].parts] == ["hello Ada"]
    assert [m.parts[0].text for m in answered.history] == ["hello", "Ada"]
    history = await server.manager.history.load("\x1f".join(("", asked.context_id, "ask_name")))
    assert history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "what is your name?"}]


async def test_a_task_waiting_for_input_can_be_cancelled(serve, channel_to):
    server = await serve(ask_name)
    stub = a2a_stub(channel_to(server.address))
    asked = (await stub.SendMessage(send("hello"))).task
    cancelled = await stub.CancelTask(a2a.CancelTaskRequest(id=asked.id))
    assert cancelled.status.state == State.TASK_STATE_CANCELED


async def test_failed_run_is_a_failed_task_with_a_safe_message(serve, channel_to):
    async def failing(input: Any) -> Any:
        raise ValueError("secret internal detail")

    server = await serve(failing)
    stub = a2a_stub(channel_to(server.address))
    task = (await stub.SendMessage(send("x"))).task
    assert task.status.state == State.TASK_STATE_FAILED
    assert "secret" not in task.status.message.parts[0].text and task.id in task.status.message.parts[0].text


async def test_tool_and_custom_events_are_status_updates_with_metadata(serve, channel_to):
    async def noisy(input: Any) -> Any:
        emit_event("step", {"n": 1})
        return "ok"

    server = await serve(noisy)
    stub = a2a_stub(channel_to(server.address))
    updates = [r.status_update async for r in stub.SendStreamingMessage(send("x"))
               if r.WhichOneof("payload") == "status_update"]
    events = [dict(u.metadata)["agent_runtime.event"] for u in updates if u.metadata]
    custom = [e for e in events if "custom" in e]
    assert custom and custom[0]["custom"]["name"] == "step" and custom[0]["custom"]["data"] == {"n": 1}
    assert [u.status.state for u in updates][-1] == State.TASK_STATE_COMPLETED


async def test_over_capacity_is_resource_exhausted_with_a_retry_hint(serve, channel_to):
    server = await serve(words, max_concurrency=1, max_queue=0)
    stub = a2a_stub(channel_to(server.address))
    slow = stub.SendStreamingMessage(send("pause=0.3 a b c d e f g h"))
    await slow.read()  # the task: its run holds the slot
    error = await refused(stub.SendMessage(send("x")))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found, metadata = details(error)
    info, retry = found
    assert info.reason == "OVERLOADED" and retry.retry_delay.ToMilliseconds() >= 1
    assert int(metadata["grpc-retry-pushback-ms"]) >= 1
    slow.cancel()
    await wait_until(lambda: not server.manager.runs, "the cancelled run to end")


async def test_the_token_is_the_user_and_tasks_are_the_callers_own(serve, channel_to):
    server = await serve(auth_token=TOKEN)
    stub = a2a_stub(channel_to(server.address))
    error = await refused(stub.SendMessage(send("x")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    mine = (("authorization", f"Bearer {TOKEN}"),)
    task = (await stub.SendMessage(send("x"), metadata=mine)).task
    assert (await stub.GetTask(a2a.GetTaskRequest(id=task.id), metadata=mine)).id == task.id
    card = await stub.GetExtendedAgentCard(a2a.GetExtendedAgentCardRequest(), metadata=mine)
    assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "Bearer"
    [record] = await server.a2a_tasks.list()
    assert record.owner.startswith("bearer:") and TOKEN not in record.owner


async def test_client_cancel_cancels_the_run_and_the_task(serve, channel_to):
    server = await serve(words)
    stub = a2a_stub(channel_to(server.address))
    call = stub.SendStreamingMessage(send("pause=0.5 a b c d e f"))
    first = await call.read()
    call.cancel()
    await wait_until(lambda: not server.manager.runs, "the run to be cancelled")
    got = await stub.GetTask(a2a.GetTaskRequest(id=first.task.id))
    assert got.status.state == State.TASK_STATE_CANCELED


async def test_health_reflection_and_switch(serve, channel_to):
    server = await serve()
    health = health_pb2_grpc.HealthStub(channel_to(server.address))
    reply = await health.Check(health_pb2.HealthCheckRequest(service="lf.a2a.v1.A2AService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    off = await serve(a2a=False)
    error = await refused(a2a_stub(channel_to(off.address)).SendMessage(send("x")))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "lf.a2a.v1.A2AService" not in off.services


async def test_metrics_and_spans_as_invoke(serve, channel_to, spans):
    provider, exporter = spans
    registry = CollectorRegistry()
    server = await serve(registry=registry, tracer_provider=provider)
    stub = a2a_stub(channel_to(server.address))
    await stub.SendMessage(send("x"))
    assert registry.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "unary", "grpc_service": "lf.a2a.v1.A2AService", "grpc_method": "SendMessage",
        "grpc_code": "OK"}) == 1
    assert registry.get_sample_value("agent_runtime_runs_total", {"agent": "echo", "status": "ok"}) == 1
    names = {"invoke_agent echo", "lf.a2a.v1.A2AService/SendMessage"}
    await wait_until(lambda: names <= {span.name for span in exporter.get_finished_spans()}, "the spans")
    by_name = {span.name: span for span in exporter.get_finished_spans()}
    rpc, run = by_name["lf.a2a.v1.A2AService/SendMessage"], by_name["invoke_agent echo"]
    assert run.parent.span_id == rpc.context.span_id and run.context.trace_id == rpc.context.trace_id


async def test_grpcurl_lists_describes_and_sends_json(serve, grpcurl):
    from test_grpcurl import grpcurl_run

    server = await serve()
    address = server.address
    assert "lf.a2a.v1.A2AService" in (await grpcurl_run(grpcurl, address, "list")).split()
    described = await grpcurl_run(grpcurl, address, "describe", "lf.a2a.v1.A2AService")
    assert "rpc SendStreamingMessage ( .lf.a2a.v1.SendMessageRequest ) returns ( stream .lf.a2a.v1.StreamResponse )" \
        in described
    body = '{"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi there"}]}}'
    reply = json.loads(await grpcurl_run(grpcurl, "-d", body, address, "lf.a2a.v1.A2AService/SendMessage"))
    task = reply["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert "".join(part["text"] for part in task["artifacts"][0]["parts"]) == "hi there"


def _http(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def test_the_card_is_served_over_http_beside_metrics(serve):
    from a2a.client.card_resolver import parse_agent_card

    port = free_port()
    server = await serve(metrics_port=port, a2a_url="agents.example.svc:50051")
    base = f"http://127.0.0.1:{port}"
    status, body = await asyncio.to_thread(_http, base + "/.well-known/agent-card.json")
    assert status == 200
    card = parse_agent_card(json.loads(body))
    assert card == server.a2a_card
    assert [(i.url, i.protocol_binding) for i in card.supported_interfaces] == [("agents.example.svc:50051", "GRPC")]
    assert [skill.id for skill in card.skills] == ["echo.reverse"]
    assert not card.security_schemes
    status, body = await asyncio.to_thread(_http, base + "/metrics")
    assert status == 200 and b"agent_runtime_" in body
    status, _ = await asyncio.to_thread(_http, base + "/.well-known/agent-card.json", "POST")
    assert status == 405


async def test_the_card_names_the_bound_address_by_default(serve):
    server = await serve()
    [interface] = server.a2a_card.supported_interfaces
    assert interface.url == server.address and not interface.tenant


async def test_input_required_over_invoke_is_failed_precondition_with_the_question(serve, channel_to):
    from agent_runtime._proto.agent_runtime.v1 import runtime_pb2
    from conftest import stub

    server = await serve(ask_name)
    error = await refused(stub(channel_to(server.address)).Invoke(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="hello"))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and error.details() == "what is your name?"


async def test_the_callers_deadline_bounds_the_run_and_fails_the_task(serve, channel_to):
    server = await serve(words)
    stub = a2a_stub(channel_to(server.address))
    try:
        task = (await stub.SendMessage(send("pause=0.4 a b c d e f"), timeout=1.0)).task
    except grpc.aio.AioRpcError as error:  # the reply lost the race with the deadline
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_until(lambda: not server.manager.runs, "the run to end")
        [record] = await server.a2a_tasks.list()
        task = record.snapshot()
    assert task.status.state == State.TASK_STATE_FAILED
    assert "time limit" in task.status.message.parts[0].text
    assert not server.manager.runs


async def test_a_task_takes_one_answer_at_a_time(serve, channel_to):
    server = await serve([ask_name, words], max_concurrency=1)
    stub = a2a_stub(channel_to(server.address))
    asked = (await stub.SendMessage(send("hello", tenant="ask_name"))).task
    busy = stub.SendStreamingMessage(send("pause=0.2 a b c d e f g h i j", tenant="words"))
    await busy.read()  # holds the only slot
    first = asyncio.ensure_future(stub.SendMessage(send("Ada", task_id=asked.id)))
    await wait_until(lambda: server.manager.admission.waiting == 1, "the first answer to queue")
    error = await refused(stub.SendMessage(send("Bob", task_id=asked.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "being answered" in error.details()
    busy.cancel()
    answered = (await first).task
    assert [p.text for p in answered.artifacts[-1].parts] == ["hello Ada"]


@pytest.mark.parametrize("output", ["one", "chunks"])
async def test_output_with_no_wire_form_fails_the_task(serve, channel_to, output):
    async def unsendable(input: Any) -> Any:
        return object()

    async def unsendable_chunks(input: Any):
        yield "fine "
        yield object()

    server = await serve(unsendable if output == "one" else unsendable_chunks)
    stub = a2a_stub(channel_to(server.address))
    task = (await stub.SendMessage(send("x"))).task
    assert task.status.state == State.TASK_STATE_FAILED
    assert "cannot be sent" in task.status.message.parts[0].text
    await wait_until(lambda: not server.manager.runs, "the run to end")
    assert (await stub.GetTask(a2a.GetTaskRequest(id=task.id))).status.state == State.TASK_STATE_FAILED


async def test_an_unexpected_failure_is_internal_and_keeps_its_detail_in_the_log(serve, channel_to, caplog):
    server = await serve()

    async def broken_store(task_id: str) -> Any:
        raise RuntimeError("store detail")

    server.a2a_tasks.get = broken_store  # a store that fails, as a shared one may
    stub = a2a_stub(channel_to(server.address))
    error = await refused(stub.GetTask(a2a.GetTaskRequest(id="t")))
    assert error.code() == grpc.StatusCode.INTERNAL and "store detail" not in error.details()
    assert "store detail" in caplog.text
    await _keeps_serving(stub)


async def test_a_draining_server_refuses_new_tasks_as_invoke_does(serve, channel_to):
    server = await serve()
    stub = a2a_stub(channel_to(server.address))
    server.manager.admission.draining = True
    error = await refused(stub.SendMessage(send("x")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    [info], _ = details(error)
    assert (info.reason, info.domain) == ("DRAINING", "agent-runtime")


async def test_cancel_answers_in_bounded_time_while_the_tasks_caller_reads_nothing(serve, channel_to):
    async def flood(input: Any):
        for _ in range(400):
            yield "x" * 65536

    # The client's flow-control window (a few MB) must fill before the server's writes block,
    # and the task then holds all that was written: replies of that size must be allowed.
    size = 64 * 1024 * 1024
    server = await serve(flood, cancel_grace=0.2, max_message_bytes=size)
    channel = grpc.aio.insecure_channel(server.address, options=[("grpc.max_receive_message_length", size)])
    stub = a2a_stub(channel)
    stalled = stub.SendStreamingMessage(send("go"))
    task_id = (await stalled.read()).task.id  # then reads no more: the server's writes block
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await stub.CancelTask(a2a.CancelTaskRequest(id=task_id))
    assert loop.time() - began < 5
    assert answer.id == task_id
    stalled.cancel()
    await wait_until(lambda: not server.manager.runs, "the run to end")
    got = await stub.GetTask(a2a.GetTaskRequest(id=task_id))
    assert got.status.state == State.TASK_STATE_CANCELED
    await channel.close()
