"""Run events in Redis Streams, for `WatchRun`: replay after a seq, then follow live.

Every event of every run goes to the run's stream (`<prefix>events:<run id>`) as it
happens, in its wire form, with the entry id `0-<seq + 1>`: the event's `seq` is
the cursor, so a watcher cut off after seq k resumes after k, on any replica, and
gets every later event exactly once. A run's events are batched as the writer's
round trips allow (one command per batch, not per event), a stream keeps the last
`max_events` (approximately: Redis trims whole nodes), and it expires `ttl`
seconds after its last event.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from ..errors import EventsExpired, StoreUnavailable
from ..events import EventType, RunEvent
from .connection import Store
from .runs import Encode, RunRecord
from .writer import StoreWriter

logger = logging.getLogger("agent_runtime.store")

# Milliseconds a watcher's read waits for new events before it looks at the run's record.
POLL_MS = 1000
# Entries one read returns at most.
READ_COUNT = 512
_END = EventType.RUN_END


def _entry_id(seq: int) -> str:
    return f"0-{seq + 1}"


class RedisEvents:
    """The event sink that writes every run's events to its stream, and the reader of them."""

    def __init__(self, store: Store, writer: StoreWriter, encode: Encode, *, ttl: float = 3600.0,
                 max_events: int = 10_000) -> None:
        self.store = store
        self.writer = writer
        self.encode = encode
        self.max_events = max_events
        self._ttl_ms = max(1, round(ttl * 1000))
        self._batch: list[RunEvent] = []

    def on_event(self, event: RunEvent) -> None:
        """Add `event` to the batch the writer sends next (one writer command per batch)."""
        batch = self._batch
        batch.append(event)
        if len(batch) == 1 and not self.writer.put(self._write):
            batch.clear()  # the writer's backlog is full: these events are lost (and counted)

    def _write(self, pipe: Any) -> None:
        batch, self._batch = self._batch, []
        key = self.store.key
        encode = self.encode
        streams = {}
        for event in batch:
            run_id = event.run.run_id
            stream = streams.get(run_id)
            if stream is None:
                stream = streams[run_id] = key("events", run_id)
            try:
                fields = {"e": encode(event)}
            except Exception:
                logger.exception("event %d of run %s could not be encoded; watchers will miss it",
                                 event.seq, run_id)
                continue
            if event.type is _END:
                fields["end"] = b"1"
            pipe.xadd(stream, fields, id=_entry_id(event.seq), maxlen=self.max_events, approximate=True)
        for stream in streams.values():
            pipe.pexpire(stream, self._ttl_ms)

    async def watch(self, record: RunRecord, after_seq: int,
                    refresh: Callable[[], Awaitable[RunRecord | None]]) -> AsyncIterator[bytes]:
        """The encoded events of `record`'s run after `after_seq` (-1: all), then those to come,
        until its end event. `refresh` reads the run's record again: a watcher looks at it
        when no event came for POLL_MS, to learn that the run has ended."""
        from redis.exceptions import RedisError

        stream = self.store.key("events", record.run_id)
        last = after_seq
        end, end_seq = record.end, record.end_seq
        try:
            while True:
                if end_seq is not None and last >= end_seq:
                    return
                reply = await self.store.redis.xread({stream: _entry_id(last)}, count=READ_COUNT,
                                                     block=None if end is not None else POLL_MS)
                entries = reply[0][1] if reply else ()
                for entry_id, fields in entries:
                    seq = int(entry_id.rsplit(b"-", 1)[1]) - 1
                    if seq != last + 1:
                        raise EventsExpired(f"the events of run {record.run_id} after seq {last} are no longer "
                                            f"kept; the oldest kept is seq {seq}", run_id=record.run_id)
                    yield fields[b"e"]
                    last = seq
                    if b"end" in fields:
                        return
                if entries:
                    continue
                if end is not None:  # ended, and its stream holds no more: it expired
                    if end_seq > last:
                        if end_seq != last + 1:
                            raise EventsExpired(f"the events of run {record.run_id} after seq {last} are no "
                                                "longer kept", run_id=record.run_id)
                        yield end
                    return
                latest = await refresh()
                if latest is not None:
                    end, end_seq = latest.end, latest.end_seq
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"the run store is unavailable: {exc}", run_id=record.run_id) from None
