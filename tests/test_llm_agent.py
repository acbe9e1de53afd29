"""Model-backed Agents through the real `openai` client against the fake provider:
the tool loop, streaming, events, hooks, history, structured output, and every
provider failure as its gRPC status."""

from __future__ import annotations

import asyncio
import json

import grpc
import pydantic
import pytest
from conftest import runtime_pb2, stub
from redis_store import history_stores  # noqa: F401

from agent_runtime import (Agent, AgentHooks, Blob, InvalidInput, MaxTurnsExceeded, ProviderRejected,
                           ProviderUnavailable, SessionManager, tool)


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


@tool
async def multiply(a: int, b: int) -> int:
    """Multiply two whole numbers."""
    return a * b


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


def calc(fake, **settings) -> Agent:
    settings.setdefault("tools", [add, multiply])
    return Agent(name="calc", model="openai/gpt-test", instructions="Use the tools.",
                 base_url=fake.base_url, api_key="test-key", **settings)


async def run_once(agent, input="hi", **session):
    manager = SessionManager(agent)
    try:
        async with manager.session(**session) as s, s.run(input) as runner:
            return await runner.result()
    finally:
        await manager.aclose()


def label(event: runtime_pb2.InvokeEvent) -> str:
    kind = event.WhichOneof("event")
    if kind in ("tool_started", "tool_ended"):
        return f"{kind}:{getattr(event, kind).tool}"
    return kind


def collapse(labels: list[str]) -> list[str]:
    return [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1] or x != "chunk"]


async def test_final_answer(fake_llm):
    fake_llm.reply("Hello there")
    assert await run_once(calc(fake_llm)) == "Hello there"
    request = fake_llm.requests[0]
    assert request["model"] == "gpt-test"
    assert request["messages"] == [{"role": "system", "content": "Use the tools."},
                                   {"role": "user", "content": "hi"}]
    assert request["_headers"]["authorization"] == "Bearer test-key"
    assert [t["function"]["name"] for t in request["tools"]] == ["add", "multiply"]
    assert request["tools"][0]["function"]["parameters"]["properties"]["a"]["description"] == "the first number"
    assert "stream" not in request


async def test_two_tool_calls_over_grpc_stream(fake_llm, serve, channel_to):
    fake_llm.call(("add", {"a": 2, "b": 3})).call(("multiply", {"a": 5, "b": 7})).reply("The answer is 35")
    server = await serve(calc(fake_llm))
    events = [e async for e in stub(channel_to(server.address)).InvokeStream(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="(2+3)*7?")))]
    assert collapse([label(e) for e in events]) == [
        "started", "llm_started", "llm_ended", "tool_started:add", "tool_ended:add",
        "llm_started", "llm_ended", "tool_started:multiply", "tool_ended:multiply",
        "llm_started", "chunk", "llm_ended", "ended"]
    assert "".join(e.chunk.text for e in events if e.HasField("chunk")) == "The answer is 35"
    ended = events[-1].ended
    assert ended.status == runtime_pb2.RUN_STATUS_OK and ended.output.text == "The answer is 35"
    assert (ended.usage.input_tokens, ended.usage.output_tokens) == (33, 21)
    llm_ended = [e.llm_ended for e in events if e.HasField("llm_ended")]
    assert [(e.model, e.usage.input_tokens, e.finish_reason) for e in llm_ended] == [
        ("openai/gpt-test", 11, "tool_calls"), ("openai/gpt-test", 11, "tool_calls"),
        ("openai/gpt-test", 11, "stop")]
    tool_ended = [e.tool_ended for e in events if e.HasField("tool_ended")]
    assert [(t.status, t.result.number_value) for t in tool_ended] == [(runtime_pb2.RUN_STATUS_OK, 5),
                                                                      (runtime_pb2.RUN_STATUS_OK, 35)]
    assert all(r["stream"] and r["stream_options"] == {"include_usage": True} for r in fake_llm.requests)
    last = fake_llm.requests[2]["messages"]
    assert last[-1] == {"role": "tool", "tool_call_id": "call_0", "content": "35"}
    assert last[-2]["tool_calls"][0]["function"] == {"name": "multiply", "arguments": '{"a": 5, "b": 7}'}


async def test_unary_invoke_reports_usage(fake_llm, serve, channel_to):
    fake_llm.call(("add", {"a": 1, "b": 1})).reply("2", usage=(100, 3))
    server = await serve(calc(fake_llm))
    reply = await stub(channel_to(server.address)).Invoke(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="1+1?")))
    assert reply.output.text == "2"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (111, 10)


async def test_parallel_tool_calls_run_concurrently(fake_llm):
    barrier = asyncio.Barrier(2)

    @tool
    async def meet(who: str) -> str:
        """Wait until both calls are running at once."""
        async with asyncio.timeout(10):
            await barrier.wait()
        return f"met {who}"

    fake_llm.call(("meet", {"who": "a"}), ("meet", {"who": "b"})).reply("done")
    assert await run_once(calc(fake_llm, tools=[meet])) == "done"
    tool_messages = [m for m in fake_llm.requests[1]["messages"] if m["role"] == "tool"]
    assert tool_messages == [{"role": "tool", "tool_call_id": "call_0", "content": "met a"},
                             {"role": "tool", "tool_call_id": "call_1", "content": "met b"}]


@pytest.mark.parametrize("call, expected", [
    (("add", '{"a": 1, "b": '), "are not valid JSON"),
    (("add", {"a": "x", "b": 1}), "invalid arguments for tool 'add'"),
    (("explode", {"reason": "boom"}), "Error: RuntimeError: boom"),
    (("nonesuch", {}), "there is no tool named 'nonesuch'; the tools are: add, multiply, explode"),
])
async def test_tool_errors_are_told_to_the_model(fake_llm, serve, channel_to, call, expected):
    fake_llm.call(call).reply("sorry")
    server = await serve(calc(fake_llm, tools=[add, multiply, explode]))
    events = [e async for e in stub(channel_to(server.address)).InvokeStream(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="go")))]
    assert events[-1].ended.status == runtime_pb2.RUN_STATUS_OK
    tool_ended = [e.tool_ended for e in events if e.HasField("tool_ended")]
    assert [(t.tool, t.status) for t in tool_ended] == [(call[0], runtime_pb2.RUN_STATUS_ERROR)]
    tool_message = fake_llm.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and expected in tool_message["content"]


async def test_rate_limit_is_retried(fake_llm):
    fake_llm.fail(429, "slow down", retry_after_ms="10").reply("fine")
    assert await run_once(calc(fake_llm)) == "fine"
    assert len(fake_llm.requests) == 2


@pytest.mark.parametrize("status, code, text", [
    (500, grpc.StatusCode.UNAVAILABLE, "is unavailable (HTTP 500 after 1 retries): scripted failure"),
    (503, grpc.StatusCode.UNAVAILABLE, "is unavailable (HTTP 503"),
    (401, grpc.StatusCode.UNAVAILABLE, "refused this server's credentials (HTTP 401)"),
    (400, grpc.StatusCode.INVALID_ARGUMENT, "rejected the request (HTTP 400): scripted failure"),
    (404, grpc.StatusCode.INVALID_ARGUMENT, "rejected the request (HTTP 404)"),
])
async def test_provider_errors_map_to_status(fake_llm, serve, channel_to, status, code, text):
    for _ in range(2):
        fake_llm.fail(status, retry_after_ms="10")
    server = await serve(calc(fake_llm, max_retries=1))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub(channel_to(server.address)).Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x")))
    assert failure.value.code() == code
    assert text in failure.value.details() and "Traceback" not in failure.value.details()
    retried = status >= 500
    assert len(fake_llm.requests) == (2 if retried else 1)
    assert server.manager.admission.in_use == 0


async def test_hanging_provider_times_out(fake_llm):
    fake_llm.hang()
    with pytest.raises(ProviderUnavailable, match="did not answer within 0.3s"):
        await run_once(calc(fake_llm, request_timeout=0.3, max_retries=0))
    await asyncio.wait_for(fake_llm.disconnected.wait(), 10)


async def test_unreachable_provider(fake_llm):
    port = fake_llm.port
    await fake_llm.close()
    agent = Agent(name="a", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    with pytest.raises(ProviderUnavailable, match=f"cannot reach model provider 'openai' at http://127.0.0.1:{port}"):
        await run_once(agent)


async def test_missing_api_key_is_the_servers_fault_and_not_retryable(serve, channel_to, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    server = await serve(Agent(name="a", model="openai/gpt-4o-mini"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub(channel_to(server.address)).Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x")))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.value.details() == ("the server has no API key for model provider 'openai': its operator "
                                       "must set OPENAI_API_KEY in the server's environment")
    assert dict(failure.value.trailing_metadata())["grpc-retry-pushback-ms"] == "-1"


async def test_max_turns_is_a_clear_error(fake_llm, serve, channel_to):
    fake_llm.call(("add", {"a": 1, "b": 1})).call(("add", {"a": 2, "b": 2}))
    server = await serve(calc(fake_llm, max_turns=2))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub(channel_to(server.address)).Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x")))
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert failure.value.details() == "agent 'calc' reached max_turns (2) without a final answer"
    assert len(fake_llm.requests) == 2
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        calc(fake_llm, max_turns=0)


class Weather(pydantic.BaseModel):
    city: str
    celsius: float


async def test_structured_output_over_grpc(fake_llm, serve, channel_to):
    fake_llm.reply('{"city": "Oslo"}').reply('{"city": "Oslo", "celsius": -3.5}')
    server = await serve(calc(fake_llm, output_type=Weather, tools=[]))
    channel = channel_to(server.address)
    events = [e async for e in stub(channel).InvokeStream(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="weather in Oslo?")))]
    assert not any(e.HasField("chunk") for e in events)
    output = events[-1].ended.output.structured.struct_value.fields
    assert output["city"].string_value == "Oslo" and output["celsius"].number_value == -3.5
    first, second = fake_llm.requests
    schema = first["response_format"]["json_schema"]
    assert first["response_format"]["type"] == "json_schema" and schema["name"] == "Weather"
    assert schema["schema"]["required"] == ["city", "celsius"]
    assert "does not match the required JSON schema" in second["messages"][-1]["content"]
    assert "celsius" in second["messages"][-1]["content"]


async def test_structured_output_in_python(fake_llm):
    fake_llm.reply('{"city": "Rome", "celsius": 21}')
    result = await run_once(calc(fake_llm, output_type=Weather))
    assert result == Weather(city="Rome", celsius=21)


async def test_history_continues_a_session(fake_llm, serve, channel_to, history_stores):  # noqa: F811
    fake_llm.reply("Nice to meet you, Ada").reply("Your name is Ada").reply("Who are you?")
    server = await serve(calc(fake_llm), **history_stores.settings)
    invoke = stub(channel_to(server.address)).Invoke
    for text, session in (("I am Ada", "s1"), ("What is my name?", "s1"), ("What is my name?", "s2")):
        await invoke(runtime_pb2.InvokeRequest(session_id=session, user_id="u",
                                               input=runtime_pb2.Payload(text=text)))
    second, third = fake_llm.requests[1]["messages"], fake_llm.requests[2]["messages"]
    assert [m["content"] for m in second] == ["Use the tools.", "I am Ada", "Nice to meet you, Ada",
                                              "What is my name?"]
    assert [m["content"] for m in third] == ["Use the tools.", "What is my name?"]


async def test_history_keeps_tool_turns_whole(fake_llm, history_stores):  # noqa: F811
    fake_llm.call(("add", {"a": 1, "b": 2})).reply("3").reply("again 3")
    manager = SessionManager(calc(fake_llm), history=history_stores.make())
    async with manager.session(user_id="u", session_id="s") as session:
        for text in ("1+2?", "and again?"):
            async with session.run(text) as runner:
                await runner.result()
    await manager.aclose()
    roles = [m["role"] for m in fake_llm.requests[2]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]


async def test_failed_run_leaves_history_alone(fake_llm, history_stores):  # noqa: F811
    fake_llm.fail(400).reply("fresh")
    manager = SessionManager(calc(fake_llm), history=history_stores.make())
    async with manager.session(session_id="s") as session:
        async with session.run("first") as runner:
            with pytest.raises(ProviderRejected):
                await runner.result()
        async with session.run("second") as runner:
            assert await runner.result() == "fresh"
    await manager.aclose()
    assert [m["content"] for m in fake_llm.requests[1]["messages"]] == ["Use the tools.", "second"]


async def test_result_stream_yields_token_chunks(fake_llm):
    fake_llm.call(("add", {"a": 1, "b": 2})).reply("one plus two is 3")
    manager = SessionManager(calc(fake_llm))
    async with manager.session() as session, session.run("1+2?") as runner:
        chunks = [chunk async for chunk in runner.result_stream()]
    await manager.aclose()
    assert chunks == ["one", " plus", " two", " is", " 3"]


class Recorder(AgentHooks):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_run_start(self, context, agent, input):
        self.calls.append(f"run_start:{input}:{context.agent}")

    def on_llm_start(self, context, agent, messages):
        self.calls.append(f"llm_start:{len(messages)}")

    async def on_llm_end(self, context, agent, response):
        self.calls.append(f"llm_end:{response.finish_reason}")

    async def on_tool_start(self, context, agent, tool, arguments):
        self.calls.append(f"tool_start:{tool.name}:{arguments}")

    def on_tool_end(self, context, agent, tool, result, error):
        self.calls.append(f"tool_end:{tool.name}:{result}:{error}")

    async def on_run_end(self, context, agent, output, error):
        self.calls.append(f"run_end:{output}:{type(error).__name__}")


async def test_hooks_see_each_step(fake_llm):
    hooks = Recorder()
    fake_llm.call(("add", {"a": 1, "b": 2})).reply("3")
    assert await run_once(calc(fake_llm, hooks=hooks), "1+2?") == "3"
    assert hooks.calls == [
        "run_start:1+2?:calc", "llm_start:2", "llm_end:tool_calls", 'tool_start:add:{"a": 1, "b": 2}',
        "tool_end:add:3:None", "llm_start:4", "llm_end:stop", "run_end:3:NoneType"]


async def test_hooks_see_failures(fake_llm):
    hooks = Recorder()
    fake_llm.call(("explode", {"reason": "boom"})).fail(400)
    with pytest.raises(ProviderRejected):
        await run_once(calc(fake_llm, hooks=hooks, tools=[explode]))
    assert hooks.calls[-3:] == ["tool_end:explode:None:boom", "llm_start:4", "run_end:None:ProviderRejected"]


async def test_a_hook_can_refuse_a_run(fake_llm, serve, channel_to):
    class Guard(AgentHooks):
        def on_run_start(self, context, agent, input):
            if "secret" in input:
                raise InvalidInput("this agent does not discuss secrets")

    server = await serve(calc(fake_llm, hooks=Guard()))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub(channel_to(server.address)).Invoke(
            runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="tell me a secret")))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == "this agent does not discuss secrets"
    assert fake_llm.requests == []


async def test_cancel_mid_stream_closes_the_provider_stream(fake_llm, serve, channel_to):
    fake_llm.reply(" ".join(f"w{i}" for i in range(200)), chunk_delay=0.05)
    server = await serve(calc(fake_llm))
    runtime = stub(channel_to(server.address))
    call = runtime.InvokeStream(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="talk")))
    statuses, ended = [], []
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async for event in call:
            if event.HasField("chunk") and not statuses:
                statuses.append(await runtime.CancelRun(runtime_pb2.CancelRunRequest(run_id=event.run_id)))
            if event.HasField("ended"):
                ended.append(event.ended.status)
    assert failure.value.code() == grpc.StatusCode.CANCELLED
    assert statuses[0].cancelled and ended == [runtime_pb2.RUN_STATUS_CANCELLED]
    await asyncio.wait_for(fake_llm.disconnected.wait(), 10)
    assert server.manager.admission.in_use == 0 and not server.manager.runs


async def test_caller_going_away_closes_the_provider_stream(fake_llm, serve, channel_to):
    fake_llm.reply(" ".join(f"w{i}" for i in range(200)), chunk_delay=0.05)
    server = await serve(calc(fake_llm))
    call = stub(channel_to(server.address)).InvokeStream(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="talk")))
    async for event in call:
        if event.HasField("chunk"):
            call.cancel()
            break
    await asyncio.wait_for(fake_llm.disconnected.wait(), 10)
    async with asyncio.timeout(10):
        while server.manager.admission.in_use:
            await asyncio.sleep(0.01)


async def test_run_deadline_reaches_a_hanging_model_call(fake_llm, serve, channel_to):
    fake_llm.hang()
    server = await serve(calc(fake_llm))
    request = runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x"))
    request.timeout.FromMilliseconds(300)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub(channel_to(server.address)).Invoke(request)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(fake_llm.disconnected.wait(), 10)
    assert server.manager.admission.in_use == 0


async def test_image_input_is_an_image_part(fake_llm):
    fake_llm.reply("a red pixel")
    assert await run_once(calc(fake_llm), Blob(b"\x89PNG", "image/png")) == "a red pixel"
    content = fake_llm.requests[0]["messages"][-1]["content"]
    assert content == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}}]


async def test_structured_input_is_json_text(fake_llm):
    fake_llm.reply("ok")
    await run_once(calc(fake_llm), {"question": "why", "n": 2})
    assert fake_llm.requests[0]["messages"][-1]["content"] == '{"question": "why", "n": 2}'


async def test_binary_input_that_is_no_image_is_refused(fake_llm, serve, channel_to):
    server = await serve(calc(fake_llm))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub(channel_to(server.address)).Invoke(runtime_pb2.InvokeRequest(
            input=runtime_pb2.Payload(binary=runtime_pb2.Blob(data=b"%PDF", media_type="application/pdf"))))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == "this agent takes text, JSON or images, not application/pdf"


async def test_model_settings_are_sent(fake_llm):
    fake_llm.reply("ok")
    await run_once(calc(fake_llm, model_settings={"temperature": 0.2, "max_tokens": 50}))
    assert (fake_llm.requests[0]["temperature"], fake_llm.requests[0]["max_tokens"]) == (0.2, 50)
    with pytest.raises(ValueError, match=r"model_settings cannot set \['messages'\]"):
        calc(fake_llm, model_settings={"messages": []})


async def test_max_turns_error_class(fake_llm):
    fake_llm.call(("add", {"a": 1, "b": 1}))
    with pytest.raises(MaxTurnsExceeded):
        await run_once(calc(fake_llm, max_turns=1))


async def test_agent_runs_outside_the_runtime(fake_llm):
    fake_llm.call(("add", {"a": 2, "b": 2})).reply("4")
    agent = calc(fake_llm)
    try:
        assert await agent.run("2+2?") == "4"
    finally:
        await agent.aclose()
    assert json.loads(fake_llm.requests[1]["messages"][-1]["content"]) == 4


async def test_spans_and_metrics_see_a_real_agent(fake_llm, serve, channel_to):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry

    exporter, provider, registry = InMemorySpanExporter(), TracerProvider(), CollectorRegistry()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    fake_llm.call(("add", {"a": 1, "b": 2})).reply("3").fail(400, "too long")
    server = await serve(calc(fake_llm), tracer_provider=provider, registry=registry)
    runtime = stub(channel_to(server.address))
    await runtime.Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="1+2?")))
    with pytest.raises(grpc.aio.AioRpcError):
        await runtime.Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x" * 99)))
    provider.shutdown()
    spans = exporter.get_finished_spans()
    chats = [s for s in spans if s.name == "chat openai/gpt-test"]
    assert [(s.attributes["gen_ai.usage.input_tokens"], tuple(s.attributes["gen_ai.response.finish_reasons"]))
            for s in chats] == [(11, ("tool_calls",)), (11, ("stop",)), (0, ("error",))]
    (tool_span,) = [s for s in spans if s.name == "execute_tool add"]
    run_spans = {s.context.span_id for s in spans if s.name == "invoke_agent calc"}
    assert tool_span.parent.span_id in run_spans and {s.parent.span_id for s in chats} <= run_spans
    tokens = {tuple(sorted(labels.items())): value for labels, value in (
        (s.labels, s.value) for metric in registry.collect() if metric.name == "agent_runtime_llm_tokens"
        for s in metric.samples if s.name.endswith("_total"))}
    assert tokens[(("agent", "calc"), ("kind", "input"), ("model", "openai/gpt-test"))] == 22
    assert tokens[(("agent", "calc"), ("kind", "output"), ("model", "openai/gpt-test"))] == 14


async def test_failed_model_call_ends_its_llm_event_with_the_error(fake_llm):
    fake_llm.fail(422, "bad schema")
    manager = SessionManager(calc(fake_llm))
    async with manager.session() as session, session.run("x") as runner:
        events = [event async for event in runner.events()]
    await manager.aclose()
    (llm_end,) = [e.data for e in events if e.type.value == "llm.end"]
    assert llm_end["finish_reason"] == "error"
    assert llm_end["error"] == "model provider 'openai' rejected the request (HTTP 422): bad schema"
    assert events[-1].data["error"] == llm_end["error"]


@pytest.mark.parametrize("reply, message", [
    ({"cut": True}, "the model provider's stream ended before the answer was complete"),
    ({"stream_error": "overloaded now"}, "model provider 'openai' reported an error: overloaded now"),
])
async def test_broken_streams_are_unavailable(fake_llm, serve, channel_to, reply, message):
    fake_llm.reply("one two three four five six", **reply)
    server = await serve(calc(fake_llm, max_retries=0))
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async for event in stub(channel_to(server.address)).InvokeStream(
                runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="count"))):
            events.append(event)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE and failure.value.details() == message
    assert events[-1].ended.status == runtime_pb2.RUN_STATUS_ERROR and events[-1].ended.error == message


@pytest.mark.parametrize("reply, message", [
    ({"garbage": True}, "model provider 'openai' answered with malformed JSON"),
    ({"no_choices": True}, "the model provider answered with no choices"),
])
async def test_malformed_answers_are_unavailable(fake_llm, reply, message):
    fake_llm.reply("x", **reply)
    with pytest.raises(ProviderUnavailable, match=message):
        await run_once(calc(fake_llm, max_retries=0))


async def test_two_tools_of_one_name_fail_the_run(fake_llm, serve, channel_to):
    server = await serve(calc(fake_llm, tools=[add, add]))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub(channel_to(server.address)).Invoke(runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="x")))
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert failure.value.details().startswith("agent 'calc' has two tools named 'add'")
    assert fake_llm.requests == []


async def test_a_tool_hook_can_refuse_one_of_parallel_calls(fake_llm):
    class NoMultiply(AgentHooks):
        async def on_tool_start(self, context, agent, tool, arguments):
            if tool.name == "multiply":
                raise InvalidInput("multiplication is not allowed here")

    fake_llm.call(("add", {"a": 1, "b": 2}), ("multiply", {"a": 3, "b": 4}))
    with pytest.raises(InvalidInput, match="multiplication is not allowed here"):
        await run_once(calc(fake_llm, hooks=NoMultiply()))


async def test_agent_loop_bench_runs():
    """The bench measures every contender (figures are never asserted)."""
    from bench.agent_loop import measure

    results = await measure(rounds=2, calls=2)
    assert list(results) == ["bare SDK call", "Agent run", "Agent run, streamed",
                             "Agent run, 1 tool call (2 model calls)"]
    assert all(len(rounds) == 2 and all(wall > 0 for wall, _ in rounds) for rounds in results.values())


async def test_a_slow_reader_holds_the_model_stream_back(fake_llm):
    fake_llm.reply(" ".join(f"w{i}" for i in range(1000)))
    manager = SessionManager(calc(fake_llm))
    most, chunks = 0, 0
    async with manager.session() as session, session.run("talk") as runner:
        async for event in runner.events():
            most = max(most, len(runner._buffer._items))
            if event.type.value == "chunk":
                chunks += 1
                if chunks < 300:
                    await asyncio.sleep(0.001)
    await manager.aclose()
    assert chunks == 1000 and most <= runner._buffer.high_water
