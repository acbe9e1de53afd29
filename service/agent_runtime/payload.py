"""Python values to and from the wire `Payload` (text, structured, bytes)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from google.protobuf import struct_pb2

from ._proto.agent_runtime.v1 import runtime_pb2 as pb
from .errors import InvalidInput

OCTET_STREAM = "application/octet-stream"
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes with their media type, as agents receive and may return them."""

    data: bytes
    media_type: str = OCTET_STREAM


def to_python(payload: pb.Payload) -> Any:
    """The agent's view of a request payload; InvalidInput when it is empty."""
    text = payload.text
    if text:  # the common case, known without asking which kind is set
        return text
    kind = payload.WhichOneof("kind")
    if kind == "text":
        return text
    if kind == "structured":
        if payload.structured.WhichOneof("kind") is None:
            raise InvalidInput("input.structured is an empty Value: set one of its kinds")
        return value_to_python(payload.structured)
    if kind == "binary":
        return Blob(payload.binary.data, payload.binary.media_type or OCTET_STREAM)
    raise InvalidInput("input is required: set input.text, input.structured or input.binary")


def value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidInput("input.structured holds NaN or an infinity, which JSON-like data cannot")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: value_to_python(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    return None


def to_payload(value: Any) -> pb.Payload:
    """The wire form of an agent's output; TypeError for values that have none."""
    if isinstance(value, str):
        return pb.Payload(text=value)
    if isinstance(value, Blob):
        return pb.Payload(binary=pb.Blob(data=value.data, media_type=value.media_type))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return pb.Payload(binary=pb.Blob(data=bytes(value), media_type=OCTET_STREAM))
    return pb.Payload(structured=to_value(value))


def build_value(obj: Any, new: Callable[[], Any], set_scalar: Callable[[Any, Any], bool], *,
                dump_mode: str = "json", _depth: int = 0) -> Any:
    """`obj` as a Value-like message made by `new` (google.protobuf.Value or Redpanda's,
    which share the struct and list shapes): containers, pydantic models and dataclasses
    are walked here, scalars are set by `set_scalar` (False: not a scalar it knows)."""
    if _depth > MAX_DEPTH:
        raise TypeError(f"value nested deeper than {MAX_DEPTH} levels")
    value = new()
    if set_scalar(value, obj):
        return value
    if isinstance(obj, dict):
        fields = value.struct_value.fields
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, not {type(key).__name__}")
            fields[key].CopyFrom(build_value(item, new, set_scalar, dump_mode=dump_mode, _depth=_depth + 1))
    elif isinstance(obj, (list, tuple)):
        values = value.list_value.values
        for item in obj:
            values.add().CopyFrom(build_value(item, new, set_scalar, dump_mode=dump_mode, _depth=_depth + 1))
    elif hasattr(obj, "model_dump"):
        return build_value(obj.model_dump(mode=dump_mode), new, set_scalar, dump_mode=dump_mode, _depth=_depth)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return build_value(dataclasses.asdict(obj), new, set_scalar, dump_mode=dump_mode, _depth=_depth)
    elif isinstance(obj, (Blob, bytes, bytearray, memoryview)):
        raise TypeError("bytes cannot be nested in structured data")
    else:
        raise TypeError(f"values of type {type(obj).__name__} have no wire form")
    return value


def _set_json_scalar(value: struct_pb2.Value, obj: Any) -> bool:
    if obj is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        value.bool_value = obj
    elif isinstance(obj, (int, float)):
        if isinstance(obj, float) and not math.isfinite(obj):
            raise TypeError(f"{obj!r} has no JSON form")
        value.number_value = obj
    elif isinstance(obj, str):
        value.string_value = obj
    else:
        return False
    return True


def to_value(obj: Any) -> struct_pb2.Value:
    """JSON-like Python data (and pydantic models, dataclasses) as a protobuf Value."""
    return build_value(obj, struct_pb2.Value, _set_json_scalar)
