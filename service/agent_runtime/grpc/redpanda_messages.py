"""Redpanda agent runtime protocol messages to and from the runtime's own types.

Redpanda's `Value` has kinds of its own (integer and double apart, timestamps,
bytes at any depth), so it is converted here rather than through
`google.protobuf.Value`. What an agent gets from a `Message`:

- `bytes` payload: a `str` when it is UTF-8 (what Redpanda's own SDK passed),
  else a `Blob`;
- `structured` payload: dicts, lists, str, int, float, bool, None, `bytes` and
  timezone-aware `datetime`, nested as they came;
- metadata: `RunContext.metadata`, a str-to-str mapping: string values as
  they are, bytes as UTF-8 text (base64 when they are not UTF-8), timestamps in
  RFC 3339, everything else as compact JSON.

An agent's output goes back as `bytes` for str (UTF-8), bytes and `Blob`, and as
`structured` for anything else.
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

from google.protobuf import timestamp_pb2

from .._proto.redpanda.runtime.v1alpha1 import message_pb2 as mpb
from ..errors import AgentError, InvalidInput
from ..payload import Blob, build_value
from .messages import checked_metadata

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)


def _checked_timestamp(value: mpb.Value) -> timestamp_pb2.Timestamp:
    """A Value's timestamp, InvalidInput outside Timestamp's range (a caller's mistake,
    not the server's: no traceback, no INTERNAL)."""
    stamp = value.timestamp_value
    if not (TIMESTAMP_SECONDS[0] <= stamp.seconds <= TIMESTAMP_SECONDS[1] and 0 <= stamp.nanos < 1_000_000_000):
        raise InvalidInput(f"timestamp_value out of range (seconds {stamp.seconds}, nanos {stamp.nanos}): "
                           "it must lie in years 1 to 9999, with nanos from 0 to 999,999,999")
    return stamp


def value_to_python(value: mpb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "integer_value":
        return value.integer_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "bytes_value":
        return value.bytes_value
    if kind == "timestamp_value":
        return _checked_timestamp(value).ToDatetime(tzinfo=datetime.timezone.utc)
    if kind == "struct_value":
        return {k: value_to_python(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    return None


def _set_scalar(value: mpb.Value, obj: Any) -> bool:
    if obj is None:
        value.null_value = mpb.NULL_VALUE
    elif isinstance(obj, bool):
        value.bool_value = obj
    elif isinstance(obj, int):
        if INT64_MIN <= obj <= INT64_MAX:
            value.integer_value = obj
        else:
            value.double_value = float(obj)
    elif isinstance(obj, float):
        value.double_value = obj
    elif isinstance(obj, str):
        value.string_value = obj
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        value.bytes_value = bytes(obj)
    elif isinstance(obj, Blob):
        value.bytes_value = obj.data
    elif isinstance(obj, datetime.datetime):
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(obj if obj.tzinfo else obj.replace(tzinfo=datetime.timezone.utc))
        value.timestamp_value.CopyFrom(stamp)
    else:
        return False
    return True


def to_value(obj: Any) -> mpb.Value:
    """Python data (and pydantic models, dataclasses) as a Redpanda Value; TypeError if it has none."""
    return build_value(obj, mpb.Value, _set_scalar, dump_mode="python")


def message_input(message: mpb.Message) -> Any:
    """The agent's input from a request Message; InvalidInput when it carries none."""
    kind = message.WhichOneof("payload")
    if kind == "bytes":
        data = message.bytes
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return Blob(data)
    if kind == "structured":
        if message.structured.WhichOneof("kind") is None:
            raise InvalidInput("message.structured is an empty Value: set one of its kinds")
        return value_to_python(message.structured)
    raise InvalidInput("message is required: set message.bytes (or message.serialized) or message.structured")


def _metadata_text(value: mpb.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "bytes_value":
        try:
            return value.bytes_value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.standard_b64encode(value.bytes_value).decode("ascii")
    if kind == "timestamp_value":
        return _checked_timestamp(value).ToJsonString()
    return json.dumps(value_to_python(value), separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return base64.standard_b64encode(obj).decode("ascii")
    if isinstance(obj, datetime.datetime):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} has no JSON form")


def message_metadata(message: mpb.Message) -> dict[str, str]:
    """The Message's metadata as the run's str-to-str metadata, within the usual limits."""
    return checked_metadata({key: _metadata_text(value) for key, value in message.metadata.fields.items()})


def output_message(output: Any, request: mpb.Message, run_id: str) -> mpb.Message:
    """The agent's output as a response Message that keeps the request's metadata."""
    message = mpb.Message()
    if isinstance(output, str):
        message.bytes = output.encode("utf-8")
    elif isinstance(output, Blob):
        message.bytes = output.data
    elif isinstance(output, (bytes, bytearray, memoryview)):
        message.bytes = bytes(output)
    else:
        try:
            message.structured.CopyFrom(to_value(output))
        except (TypeError, ValueError) as exc:
            raise AgentError(f"the agent's output cannot be sent: {exc}", run_id=run_id) from None
    if request.HasField("metadata"):
        message.metadata.CopyFrom(request.metadata)
    return message


def failed_message(request: mpb.Message, error: str) -> mpb.Message:
    """A failed run as the protocol's pipeline error: the input message, flagged with `error`."""
    message = mpb.Message()
    message.CopyFrom(request)
    message.error.message = error
    return message
