"""Invoke's reply is written as wire bytes (protowire); they must be exactly what upb
would serialize for the same InvokeResponse, for every kind of output, id and usage
(structured output holds protobuf maps, whose order upb does not fix: compared parsed)."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_runtime.context import new_id
from agent_runtime.grpc import messages
from agent_runtime.payload import Blob, to_payload
from agent_runtime.protowire import delimited, varint
from conftest import runtime_pb2 as pb

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
OUTPUTS = (st.text(max_size=300) | st.text(min_size=1, max_size=40).map(lambda t: t * 500) | JSON
           | st.binary(max_size=200).map(lambda data: Blob(data, "image/png")) | st.binary(max_size=50))


def runner(agent: str, session_id: str | None, tokens: tuple[int, int], trace_id: str) -> SimpleNamespace:
    run_id = new_id()
    scratch = {"trace_id": trace_id} if trace_id else {}
    return SimpleNamespace(run_id=run_id, agent=SimpleNamespace(name=agent), session_id=session_id or run_id,
                           input_tokens=tokens[0], output_tokens=tokens[1], context=SimpleNamespace(scratch=scratch))


def upb_reply(run: SimpleNamespace, output) -> bytes:
    reply = pb.InvokeResponse(run_id=run.run_id, agent=run.agent.name, session_id=run.session_id,
                              output=to_payload(output), trace_id=run.context.scratch.get("trace_id", ""))
    if run.input_tokens or run.output_tokens:
        reply.usage.input_tokens, reply.usage.output_tokens = run.input_tokens, run.output_tokens
    return reply.SerializeToString()


@settings(max_examples=300, deadline=None)
@given(output=OUTPUTS, agent=st.text(min_size=1, max_size=200), session_id=st.none() | st.text(min_size=1, max_size=256),
       tokens=st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), trace_id=st.sampled_from(["", "ab" * 16]))
def test_reply_bytes_equal_upb_serialization(output, agent, session_id, tokens, trace_id):
    run = runner(agent, session_id, tokens, trace_id)
    ours, theirs = messages.invoke_response(run, output), upb_reply(run, output)
    assert pb.InvokeResponse.FromString(ours) == pb.InvokeResponse.FromString(theirs)
    if isinstance(output, (str, bytes, Blob)):
        assert ours == theirs


def test_empty_text_output_is_sent_as_set():
    run = runner("echo", None, (0, 0), "")
    reply = pb.InvokeResponse.FromString(messages.invoke_response(run, ""))
    assert reply.output.WhichOneof("kind") == "text" and reply.session_id == reply.run_id == run.run_id


def test_varints_at_every_length_boundary_decode_as_written():
    for n in (0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**63):
        payload = b"x" * n if n < 70_000 else b""
        if payload:
            assert pb.Payload.FromString(delimited(b"\n", payload)).text == payload.decode()
        assert pb.Usage.FromString(b"\x08" + varint(n)).input_tokens == (n if n < 2**63 else n - 2**64)
