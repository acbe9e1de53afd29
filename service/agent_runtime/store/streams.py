"""Run events in Redis Streams, for `WatchRun`: replay after a seq, then follow live.

Every event of every run goes to the run's stream (`<prefix>events:<run id>`) as it
happens, in its wire form, with the entry id `0-<seq + 1>`: the event's `seq` is
the cursor, so a watcher cut off after seq k resumes after k, on any replica, and
gets every later event exactly once. A run's events are batched as the writer's
round trips allow (one script call per batch, for every run, not a command per event), a stream keeps the last
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


# ARGV[1] the TTL (ms), ARGV[2] the events a stream keeps; then per stream: its key, an event
# count n, n (entry id, encoded event, 1 for the end event else 0) triples. An entry the
# stream has already (a write sent twice) is skipped.
_WRITE = """
local ttl, keep = ARGV[1], ARGV[2]
local i = 3
while i <= #ARGV do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    if ARGV[i + 2] == '1' then
      redis.pcall('XADD', key, 'MAXLEN', '~', keep, ARGV[i], 'e', ARGV[i + 1], 'end', '1')
    else
      redis.pcall('XADD', key, 'MAXLEN', '~', keep, ARGV[i], 'e', ARGV[i + 1])
    end
    i = i + 3
  end
  redis.call('PEXPIRE', key, ttl)
end
"""


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
        self._script = store.redis.register_script(_WRITE)

    def on_event(self, event: RunEvent) -> None:
        """Add `event` to the batch the writer sends next (one writer command per batch)."""
        batch = self._batch
        batch.append(event)
        if len(batch) == 1 and not self.writer.put(self._write):
            batch.clear()  # the writer's backlog is full: these events are lost (and counted)

    async def _write(self, pipe: Any) -> None:
        batch, self._batch = self._batch, []
        encode = self.encode
        streams: dict[str, list[Any]] = {}
        for event in batch:
            run_id = event.run.run_id
            try:
                data = encode(event)
            except Exception:
                logger.exception("event %d of run %s could not be encoded; watchers will miss it",
                                 event.seq, run_id)
                continue
            entries = streams.get(run_id)
            if entries is None:
                entries = streams[run_id] = []
            entries += (_entry_id(event.seq), data, 1 if event.type is _END else 0)
        args: list[Any] = [self._ttl_ms, self.max_events]
        key = self.store.key
        for run_id, entries in streams.items():
            args += (key("events", run_id), len(entries) // 3)
            args += entries
        if streams:
            await self._script(args=args, client=pipe)

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
