"""Wire messages to and from the runtime's own types: requests in, events out."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

from .._proto.agent_runtime.v1 import runtime_pb2 as pb
from ..agent import AgentSpec
from ..context import RunContext
from ..errors import AgentError, InvalidInput, RunCancelled, RunTimeout
from ..events import EventType, RunEvent, RunStatus
from ..runner import Runner
from ..store.runs import RunRecord
from ..payload import to_payload, to_python, to_value

MAX_ID_CHARS = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 256
MAX_METADATA_VALUE_CHARS = 8192
MAX_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's range: about 10,000 years

RUN_STATUS = {
    RunStatus.OK: pb.RUN_STATUS_OK,
    RunStatus.ERROR: pb.RUN_STATUS_ERROR,
    RunStatus.CANCELLED: pb.RUN_STATUS_CANCELLED,
    RunStatus.TIMEOUT: pb.RUN_STATUS_TIMEOUT,
}


class MalformedRequest:
    """What the deserializer hands the servicer for bytes that are not the request type."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parser(message_type: type) -> Callable[[bytes], Any]:
    """A request deserializer that turns undecodable bytes into `MalformedRequest`
    (answered INVALID_ARGUMENT) instead of gRPC's generic INTERNAL."""
    parse = message_type.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RecursionError) as exc:
            return MalformedRequest(str(exc) or type(exc).__name__)

    return deserialize


def checked_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The run's metadata as a dict, within the size limits (InvalidInput beyond them)."""
    if not metadata:
        return {}  # the common case: no checks, no walk over the protobuf map
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidInput(f"metadata has {len(metadata)} entries; at most {MAX_METADATA_ENTRIES} are allowed")
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidInput(f"metadata keys must be 1-{MAX_METADATA_KEY_CHARS} characters and values "
                               f"at most {MAX_METADATA_VALUE_CHARS}")
    return dict(metadata)


_REQUEST_FIELDS = {pb.InvokeRequest.DESCRIPTOR.fields_by_name[name]: index for index, name in
                   enumerate(("agent", "session_id", "user_id", "input", "metadata", "timeout", "background",
                              "idempotency_key"))}


def run_request(request: Any) -> tuple[str, str, str, Any, dict[str, str], float | None]:
    """The (agent, session_id, user_id, input, metadata, timeout) of an InvokeRequest (or
    a MalformedRequest), checked; InvalidInput when it is not valid.

    The fields are taken from one `ListFields()`, which lists only those the request
    sets: each protobuf field read on its own builds an object, set or not (docs/design.md
    has what reading the six one by one cost)."""
    if type(request) is MalformedRequest:
        raise InvalidInput(f"request is not a valid InvokeRequest: {request.reason}")
    values: list[Any] = ["", "", "", None, None, None, False, ""]
    for field, value in request.ListFields():
        values[_REQUEST_FIELDS[field]] = value
    agent, session_id, user_id, payload, metadata, duration, _, key = values  # background: the servicer's
    if len(key) > MAX_ID_CHARS:
        raise InvalidInput(f"idempotency_key is longer than {MAX_ID_CHARS} characters")
    if len(agent) > MAX_ID_CHARS or len(session_id) > MAX_ID_CHARS or len(user_id) > MAX_ID_CHARS:
        name = next(name for name, value in (("agent", agent), ("session_id", session_id), ("user_id", user_id))
                    if len(value) > MAX_ID_CHARS)
        raise InvalidInput(f"{name} is longer than {MAX_ID_CHARS} characters")
    timeout = None
    if duration is not None:
        timeout = duration.seconds + duration.nanos / 1e9
        if timeout <= 0 or abs(duration.nanos) >= 1_000_000_000:
            raise InvalidInput("timeout must be a positive duration")
        if duration.seconds > MAX_DURATION_SECONDS:
            raise InvalidInput(f"timeout is out of Duration's range (at most {MAX_DURATION_SECONDS} seconds)")
    # text, the common input, without a call; to_python tells the other kinds (and none)
    input = (payload is not None and payload.text) or to_python(payload if payload is not None else request.input)
    return agent, session_id, user_id, input, checked_metadata(metadata) if metadata is not None else {}, timeout


def cancel_request(request: Any) -> tuple[str, str]:
    """The (run_id, user_id) of a CancelRunRequest, checked; InvalidInput when it is not valid."""
    if type(request) is MalformedRequest:
        raise InvalidInput(f"request is not a valid CancelRunRequest: {request.reason}")
    if not request.run_id:
        raise InvalidInput("run_id is required")
    for name, value in (("run_id", request.run_id), ("user_id", request.user_id)):
        if len(value) > MAX_ID_CHARS:
            raise InvalidInput(f"{name} is longer than {MAX_ID_CHARS} characters")
    return request.run_id, request.user_id


def output_payload(output: Any, run_id: str) -> pb.Payload:
    try:
        return to_payload(output)
    except (TypeError, ValueError) as exc:
        raise AgentError(f"the agent's output cannot be sent: {exc}", run_id=run_id) from None


def set_output(target: pb.Payload, output: Any, run_id: str) -> None:
    """Fill `target` (a field of the message being built) with an agent's output; text,
    the common case, is set in place rather than built apart and copied."""
    if type(output) is str:
        try:
            target.text = output
        except UnicodeEncodeError as exc:  # lone surrogates: not UTF-8, as protobuf text must be
            raise AgentError(f"the agent's output cannot be sent: {exc}", run_id=run_id) from None
    else:
        target.CopyFrom(output_payload(output, run_id))


def started_response(runner: Runner) -> pb.InvokeResponse:
    """The reply to a background Invoke: the run's ids, no output yet."""
    return pb.InvokeResponse(run_id=runner.run_id, agent=runner.agent.name, session_id=runner.session_id)


_END_ERRORS = {pb.RUN_STATUS_CANCELLED: RunCancelled, pb.RUN_STATUS_TIMEOUT: RunTimeout}


def ended_response(end: bytes, agent: str, session_id: str) -> pb.InvokeResponse:
    """The reply to an Invoke attached to a run (by its idempotency key), from the run's
    encoded end event; a run that did not end OK raises its error (as INTERNAL when it
    failed: the original status code is not kept)."""
    event = pb.InvokeEvent.FromString(end)
    ended = event.ended
    if ended.status != pb.RUN_STATUS_OK:
        raise _END_ERRORS.get(ended.status, AgentError)(ended.error, run_id=event.run_id)
    return pb.InvokeResponse(run_id=event.run_id, agent=agent, session_id=session_id, output=ended.output,
                             usage=ended.usage)


def invoke_response(runner: Runner, output: Any) -> pb.InvokeResponse:
    """The reply to Invoke: the run's ids, output, usage and trace id (when any)."""
    run_id = runner.run_id
    reply = pb.InvokeResponse(run_id=run_id, agent=runner.agent.name, session_id=runner.session_id)
    set_output(reply.output, output, run_id)
    if runner.input_tokens or runner.output_tokens:
        reply.usage.input_tokens, reply.usage.output_tokens = runner.input_tokens, runner.output_tokens
    scratch = runner.context.scratch  # empty unless a sink keeps something per run (the trace id)
    if scratch:
        reply.trace_id = scratch.get("trace_id", "")
    return reply


def usage(data: Mapping[str, Any]) -> pb.Usage:
    return pb.Usage(input_tokens=data.get("input_tokens") or 0,
                    output_tokens=data.get("output_tokens") or 0)


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def _value(obj: Any) -> Any:
    """Best-effort Value of event data (tool arguments and results): never fails."""
    try:
        return to_value(obj)
    except (TypeError, ValueError, RecursionError):
        return to_value(repr(obj))


def _started(run: RunContext, data: Mapping[str, Any], msg: pb.InvokeEvent) -> None:
    msg.started.agent = run.agent
    msg.started.session_id = run.session_id
    msg.started.queue_wait.CopyFrom(_duration(data["queue_wait"]))
    msg.started.trace_id = run.scratch.get("trace_id", "")


def _chunk(run: RunContext, data: Mapping[str, Any], msg: pb.InvokeEvent) -> None:
    set_output(msg.chunk, data["chunk"], run.run_id)  # a text chunk is filled in event_message


def _llm_started(run: RunContext, data: Mapping[str, Any], msg: pb.InvokeEvent) -> None:
    msg.llm_started.model = data.get("model", "")


def _llm_ended(run: RunContext, data: Mapping[str, Any], msg: pb.InvokeEvent) -> None:
    msg.llm_ended.model = data.get("model", "")
    msg.llm_ended.usage.CopyFrom(usage(data))
    msg.llm_ended.finish_reason = data.get("finish_reason") or ""


def _tool_started(run: RunContext, data: Mapping[str, Any], msg: pb.InvokeEvent) -> None:
    msg.tool_started.tool = data["tool"]
    msg.tool_started.call_id = data.get("call_id", "")
    msg.tool_started.arguments.CopyFrom(_value(data.get("arguments")))


def _tool_ended(run: RunContext, data: Mapping[str, Any], msg: pb.InvokeEvent) -> None:
    ended = msg.tool_ended
    ended.tool = data["tool"]
    ended.call_id = data.get("call_id", "")
    ended.status = RUN_STATUS[data["status"]]
    if data["status"] is RunStatus.OK:
        ended.result.CopyFrom(_value(data.get("result")))
    ended.error = data.get("error", "")


def _custom(run: RunContext, data: Mapping[str, Any], msg: pb.InvokeEvent) -> None:
    msg.custom.name = data["name"]
    msg.custom.data.CopyFrom(_value(data.get("data")))


def _ended(run: RunContext, data: Mapping[str, Any], msg: pb.InvokeEvent) -> None:
    ended = msg.ended
    ended.status = RUN_STATUS[data["status"]]
    if data["status"] is RunStatus.OK:
        set_output(ended.output, data["output"], run.run_id)
    ended.error = data["error"]
    ended.usage.CopyFrom(usage(data))
    ended.duration.CopyFrom(_duration(data["duration"]))


_CHUNK_EVENT = EventType.CHUNK
_FILL = {
    EventType.RUN_START: _started, EventType.CHUNK: _chunk, EventType.LLM_START: _llm_started,
    EventType.LLM_END: _llm_ended, EventType.TOOL_START: _tool_started,
    EventType.TOOL_END: _tool_ended, EventType.CUSTOM: _custom, EventType.RUN_END: _ended,
}


def event_message(event: RunEvent) -> pb.InvokeEvent:
    run, seq, kind, when, data = event  # unpacked at once: a named tuple's fields are slow to read one by one
    msg = pb.InvokeEvent()  # fields set one by one: quicker than keyword arguments
    msg.run_id = run.run_id
    msg.seq = seq
    seconds = int(when)
    stamp = msg.time  # filled in place: half the cost of building a Timestamp and copying it
    stamp.seconds = seconds
    stamp.nanos = int((when - seconds) * 1e9)
    if kind is _CHUNK_EVENT:
        chunk = data["chunk"]
        if type(chunk) is str:  # a token: nearly every event of a stream, filled here
            msg.chunk.text = chunk
            return msg
    _FILL[kind](run, data, msg)
    return msg


def encoded_event(event: RunEvent) -> bytes:
    """The event's wire form, as kept in the store."""
    return event_message(event).SerializeToString()


def run_info(record: RunRecord) -> pb.RunInfo:
    """`GetRun`'s answer: the record, and the run's end from its encoded `ended` event."""
    info = pb.RunInfo(run_id=record.run_id, agent=record.agent, session_id=record.session_id,
                      running=record.end is None, replica=record.replica)
    info.created.FromNanoseconds(int(record.created * 1e9))
    if record.end is not None:
        end = pb.InvokeEvent.FromString(record.end)
        info.ended.CopyFrom(end.time)
        info.result.CopyFrom(end.ended)
    return info


def agent_info(spec: AgentSpec) -> pb.AgentInfo:
    info = pb.AgentInfo(name=spec.name, description=spec.description, model=spec.model,
                        streaming=spec.streaming)
    for tool in spec.tools:
        entry = info.tools.add(name=tool.name, description=tool.description)
        entry.parameters.update(tool.parameters)
    return info
