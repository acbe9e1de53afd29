"""The protobuf wire format written directly, for what the runtime sends most often.

The OTLP exporter (otlp_tracer) encodes its spans this way, joining a few byte strings
rather than building OTLP messages in upb (docs/observability.md has the cost of each).
"""

from __future__ import annotations

SMALL = [bytes((n,)) for n in range(0x80)]  # every one-byte varint


def varint(n: int) -> bytes:
    """`n` (0 <= n < 2**64) as a base-128 varint."""
    if n < 0x80:
        return SMALL[n]
    if n < 0x4000:  # a span's length, mostly
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def delimited(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: `tag`, the payload's length, the payload."""
    n = len(payload)
    return tag + (SMALL[n] if n < 0x80 else varint(n)) + payload
