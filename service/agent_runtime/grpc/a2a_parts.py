"""A2A parts to and from the values agents take and return.

In: one text part is text, one data part its JSON-like value, one raw part a
`Blob`; several text parts are joined by newlines, any other mix is a list of the
parts' values. Out: text is a text part, `Blob` and bytes a raw part with their
media type, anything else a data part. URL parts are not fetched: they are refused.
"""

from __future__ import annotations

from typing import Any

from a2a.types import a2a_pb2 as a2a

from ..errors import InvalidInput
from ..payload import OCTET_STREAM, Blob, to_value, value_to_python

TEXT = "text/plain"
JSON = "application/json"
MODES = (TEXT, JSON, OCTET_STREAM)


def part_input(part: a2a.Part) -> Any:
    kind = part.WhichOneof("content")
    if kind == "text":
        return part.text
    if kind == "data":
        if part.data.WhichOneof("kind") is None:
            raise InvalidInput("a data part holds an empty Value: set one of its kinds")
        return value_to_python(part.data)
    if kind == "raw":
        return Blob(part.raw, part.media_type or OCTET_STREAM)
    if kind == "url":
        raise InvalidInput("url parts are not fetched by this server: send the content as a raw part")
    raise InvalidInput("a part has no content: set text, data or raw")


def message_input(message: a2a.Message) -> Any:
    """The agent's input from a user message; InvalidInput when it carries none."""
    parts = message.parts
    if not parts:
        raise InvalidInput("the message has no parts: send at least one text, data or raw part")
    values = [part_input(part) for part in parts]
    if len(values) == 1:
        return values[0]
    if all(isinstance(value, str) for value in values):
        return "\n".join(values)
    return values


def output_part(output: Any) -> a2a.Part:
    """An agent's output (or one chunk of it) as a part; TypeError when it has no wire form."""
    if isinstance(output, str):
        return a2a.Part(text=output)
    if isinstance(output, Blob):
        return a2a.Part(raw=output.data, media_type=output.media_type)
    if isinstance(output, (bytes, bytearray, memoryview)):
        return a2a.Part(raw=bytes(output), media_type=OCTET_STREAM)
    return a2a.Part(data=to_value(output), media_type=JSON)
