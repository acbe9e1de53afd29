"""Bad input over the wire: hypothesis-generated and byte-mutated requests, oversized
messages, invalid UTF-8, deep nesting, unknown agents, odd metadata. Every one gets
a defined status; the server stays alive and serving, its memory flat."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_runtime._proto.redpanda.runtime.v1alpha1 import agent_pb2 as redpanda_pb
from conftest import ServerProcess
from conftest import runtime_pb2 as pb

INVOKE = "/agent_runtime.v1.AgentRuntime/Invoke"
INVOKE_STREAM = "/agent_runtime.v1.AgentRuntime/InvokeStream"
REDPANDA = ("/redpanda.runtime.v1alpha1.AgentRuntime/InvokeAgent", "/redpanda.runtime.v1alpha1.Runtime/InvokeAgent")
MAX_BYTES = 65536
DEFINED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def fuzz_target():
    proc = ServerProcess(["--agent", "agent_runtime.echo:echo_agent", "--max-message-bytes", str(MAX_BYTES),
                          "--max-concurrency", "0"])
    channel = grpc.insecure_channel(proc.address)
    yield proc, channel
    channel.close()
    proc.stop()


def status_of(channel, method: str, data: bytes, metadata=None) -> grpc.StatusCode:
    """Send raw request bytes; the status the server answers with."""
    try:
        if method != INVOKE_STREAM:
            channel.unary_unary(method)(data, timeout=10, metadata=metadata)
        else:
            for _ in channel.unary_stream(method)(data, timeout=10, metadata=metadata):
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def assert_serving(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reply = pb.InvokeResponse.FromString(channel.unary_unary(INVOKE)(
        pb.InvokeRequest(input=pb.Payload(text="still here")).SerializeToString(), timeout=10))
    assert reply.output.text == "still here"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


json_like = st.recursive(
    st.none() | st.booleans() | st.floats(width=64) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25)


def value(obj) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if obj is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        out.bool_value = obj
    elif isinstance(obj, (int, float)):
        out.number_value = obj
    elif isinstance(obj, str):
        out.string_value = obj
    elif isinstance(obj, list):
        out.list_value.values.extend(value(item) for item in obj)
    else:
        for key, item in obj.items():
            out.struct_value.fields[key].CopyFrom(value(item))
    return out


payloads = st.one_of(
    st.builds(lambda t: pb.Payload(text=t), st.text(max_size=200)),
    st.builds(lambda v: pb.Payload(structured=value(v)), json_like),
    st.builds(lambda d, m: pb.Payload(binary=pb.Blob(data=d, media_type=m)), st.binary(max_size=200),
              st.text(max_size=30)),
    st.builds(lambda t: pb.Payload(structured=value({"tool": t, "arguments": {"text": 1}})), st.text(max_size=8)),
    st.just(pb.Payload()),
    st.just(pb.Payload(structured=struct_pb2.Value())))


@st.composite
def requests(draw) -> pb.InvokeRequest:
    request = pb.InvokeRequest(
        agent=draw(st.sampled_from(["", "echo", "nope"]) | st.text(max_size=300)),
        session_id=draw(st.text(max_size=300)), user_id=draw(st.text(max_size=300)),
        metadata=draw(st.dictionaries(st.text(max_size=300), st.text(max_size=9000), max_size=70)))
    request.input.CopyFrom(draw(payloads))
    if draw(st.booleans()):
        request.timeout.seconds = draw(st.integers(-10, 10**9))
        request.timeout.nanos = draw(st.integers(-(2**31), 2**31 - 1))
    return request


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests(), streaming=st.booleans())
def test_generated_requests_get_defined_statuses(fuzz_target, request, streaming):
    _, channel = fuzz_target
    code = status_of(channel, INVOKE_STREAM if streaming else INVOKE, request.SerializeToString())
    assert code in DEFINED


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and buf:
            del buf[min(pos, len(buf) - 1)]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


SEED_REQUESTS = [
    pb.InvokeRequest(agent="echo", input=pb.Payload(text="hello world"), metadata={"k": "v"}, user_id="u"),
    pb.InvokeRequest(input=pb.Payload(structured=value({"a": [1.0, None, {"b": True}], "tool": "reverse",
                                                        "arguments": {"text": "abc"}}))),
    pb.InvokeRequest(input=pb.Payload(binary=pb.Blob(data=b"\x00\x01", media_type="image/png")),
                     session_id="s"),
]


def mutated_batch(rng: random.Random, count: int):
    for _ in range(count):
        yield mutate(rng, rng.choice(SEED_REQUESTS).SerializeToString())


def nested_value(depth: int) -> bytes:
    """A Value `depth` lists deep, encoded by hand (no recursion on either side)."""
    inner = b"\x1a\x00"  # Value{string_value: ""}
    for _ in range(depth):
        list_value = b"\x0a" + _varint(len(inner)) + inner  # ListValue{values: [inner]}
        inner = b"\x32" + _varint(len(list_value)) + list_value  # Value{list_value}
    payload = b"\x12" + _varint(len(inner)) + inner  # Payload{structured}
    return b"\x22" + _varint(len(payload)) + payload  # InvokeRequest{input}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@pytest.mark.parametrize("data, expected", [
    (b"\x0a\x02\xff\xfe" + SEED_REQUESTS[0].SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT),  # bad UTF-8
    (b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),
    (b"", grpc.StatusCode.INVALID_ARGUMENT),  # no input
    (nested_value(20), grpc.StatusCode.OK),
    (nested_value(5000), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.InvokeRequest(agent="nope", input=pb.Payload(text="x")).SerializeToString(), grpc.StatusCode.NOT_FOUND),
    (pb.InvokeRequest(input=pb.Payload(text="x" * (MAX_BYTES + 1))).SerializeToString(),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    (pb.InvokeRequest(input=pb.Payload(text="x"), metadata={str(i): "v" for i in range(65)}).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT),
    (pb.InvokeRequest(input=pb.Payload(text="x"), metadata={"": "v"}).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT),
    (pb.InvokeRequest(input=pb.Payload(structured=value(float("nan")))).SerializeToString(),
     grpc.StatusCode.INVALID_ARGUMENT),
])
@pytest.mark.parametrize("method", [INVOKE, INVOKE_STREAM])
def test_known_bad_requests(fuzz_target, data, expected, method):
    _, channel = fuzz_target
    assert status_of(channel, method, data) is expected


@pytest.mark.parametrize("metadata", [
    (("x-junk-bin", bytes(range(256))),),
    (("x-big", "v" * 6000),),
    (("authorization", "Basic Zm9vOmJhcg=="),),
    tuple((f"x-k{i}", "v" * 50) for i in range(100)),
    (("agent-runtime-run-id", "forged"), ("grpc-retry-pushback-ms", "-1")),
])
def test_odd_call_metadata_is_answered(fuzz_target, metadata):
    _, channel = fuzz_target
    code = status_of(channel, INVOKE, SEED_REQUESTS[0].SerializeToString(), metadata)
    assert code in DEFINED
    assert_serving(channel)


def test_mutations_get_defined_statuses_and_memory_stays_flat(fuzz_target):
    proc, channel = fuzz_target
    rng = random.Random(7)
    for data in mutated_batch(rng, 1500):  # warm-up: caches, allocator arenas
        assert status_of(channel, rng.choice((INVOKE, INVOKE_STREAM)), data) in DEFINED
    before = rss_kib(proc.proc.pid)
    codes = set()
    for data in mutated_batch(rng, 4000):
        code = status_of(channel, rng.choice((INVOKE, INVOKE_STREAM)), data)
        assert code in DEFINED, (code, data)
        codes.add(code)
    after = rss_kib(proc.proc.pid)
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes
    assert after - before < 8 * 1024, f"RSS grew from {before} KiB to {after} KiB"
    assert_serving(channel)


def test_mutated_redpanda_requests_get_defined_statuses(fuzz_target):
    """Redpanda's protocol (both service names) takes the same bad input."""
    _, channel = fuzz_target
    rng = random.Random(8)
    seeds = [redpanda_pb.InvokeAgentRequest(message={"bytes": b"hello"}).SerializeToString(),
             redpanda_pb.InvokeAgentRequest(
                 message={"bytes": b"{}", "metadata": {"fields": {"k": {"string_value": "v"}}}},
                 trace_context={"trace_id": "0" * 32, "span_id": "1" * 16}).SerializeToString()]
    codes = set()
    for _ in range(1500):
        code = status_of(channel, rng.choice(REDPANDA), mutate(rng, rng.choice(seeds)))
        assert code in DEFINED
        codes.add(code)
    assert grpc.StatusCode.OK in codes
    assert_serving(channel)
