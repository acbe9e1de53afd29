"""Per-run events: small immutable records with a per-run sequence number.

A run's events go to the sinks registered once at start-up (metrics, spans, logs)
and, when somebody streams the run, to that caller's buffer. Nothing is built
when neither is there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple, Protocol

if TYPE_CHECKING:
    from .context import RunContext


class EventType(str, enum.Enum):
    RUN_START = "run.start"
    CHUNK = "chunk"
    LLM_START = "llm.start"
    LLM_END = "llm.end"
    TOOL_START = "tool.start"
    TOOL_END = "tool.end"
    CUSTOM = "custom"
    RUN_END = "run.end"


_CHUNK = EventType.CHUNK
_RUN_END = EventType.RUN_END


class RunStatus(str, enum.Enum):
    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


class RunEvent(NamedTuple):
    """One thing that happened in a run (a named tuple: immutable and quick to make).

    `data` keys by type: run.start {queue_wait}; chunk {chunk}; llm.start {model};
    llm.end {model, input_tokens, output_tokens, finish_reason, error}; tool.start
    {tool, call_id, arguments}; tool.end {tool, call_id, status, result, error,
    duration}; custom {name, data}; run.end {status, output, error, duration,
    queue_wait, input_tokens, output_tokens}.
    """

    run: "RunContext"
    seq: int
    type: EventType
    time: float
    data: Mapping[str, Any]


class EventSink(Protocol):
    """Receives every event of every run, synchronously, in the run's own task.

    It must be quick and must not raise (an exception is logged and dropped).
    Because it runs in the run's task, it sees the run's contextvars. A sink that
    wants only some event types says so in an `event_types` attribute (a set of
    EventType), and one that wants the run.end of runs with some statuses only, in
    a `run_end_statuses` attribute (a set of RunStatus); events that no sink wants and
    nobody streams are never built.
    """

    def on_event(self, event: RunEvent) -> None: ...


Routes = dict[Any, tuple[EventSink, ...]]


def routes(sinks: "Iterable[EventSink]") -> Routes:
    """The sinks that want each event type, in registration order; run.end by the run's
    status (keyed by RunStatus)."""
    sinks = tuple(sinks)
    table: Routes = {kind: tuple(s for s in sinks if kind in getattr(s, "event_types", EventType))
                     for kind in EventType}
    for status in RunStatus:
        table[status] = tuple(s for s in table[EventType.RUN_END] if status in getattr(s, "run_end_statuses", RunStatus))
    return table


# What one buffered event is counted as, besides its text: the event, its data dict
# and the message made of it, roughly (a run's buffer is bounded in these bytes).
EVENT_BYTES = 320
# Bytes of events a run's caller may leave unread before a producer that cannot wait
# (`emit_chunk` from a coroutine on the loop) fails the run.
BUFFER_LIMIT = 8 * 1024 * 1024


class BufferedBytes:
    """What the callers' streams of all runs hold unread, in `EVENT_BYTES` terms (a metric).

    Written in the event loop's thread only; a scrape reads one int."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class EventBuffer:
    """The caller's per-run stream: a bounded FIFO with one waiting reader.

    It is the run's own event sink. Producers that can wait are held back at
    `high_water` events: coroutines with `wait_below` (streaming agents,
    `stream_chunk`), worker threads with `when_below`. A producer that cannot wait
    (`emit_chunk` from a coroutine) is bounded instead: past `limit` bytes
    `on_overflow` is called (the runner fails the run) and what follows, but
    run.end, is dropped. Once the run is over (`stop`) nobody waits for space; once
    the reader has gone (`close`) nothing is kept."""

    __slots__ = ("_items", "_reader", "_space", "_waiters", "high_water", "limit", "size", "total",
                 "overflowed", "stopped", "closed", "on_overflow", "on_drained")

    def __init__(self, total: BufferedBytes | None = None, high_water: int = 256,
                 limit: int = BUFFER_LIMIT) -> None:
        self._items: deque[RunEvent] = deque()
        self._reader: asyncio.Future | None = None
        self._space: asyncio.Future | None = None
        self._waiters: list[concurrent.futures.Future] = []
        self.high_water = high_water
        self.limit = limit
        self.size = 0  # bytes held, as `total` counts them
        self.total = total if total is not None else BufferedBytes()
        self.overflowed = False
        self.stopped = False
        self.closed = False
        self.on_overflow: Callable[[], None] | None = None
        self.on_drained: Callable[[], None] | None = None

    def on_event(self, event: RunEvent) -> None:
        if self.closed:
            return
        kind = event[2]
        if kind is _CHUNK:
            chunk = event[4]["chunk"]
            size = EVENT_BYTES + len(chunk) if type(chunk) is str else EVENT_BYTES
        elif kind is _RUN_END:
            output = event[4]["output"]
            size = EVENT_BYTES + len(output) if type(output) is str else EVENT_BYTES
        else:
            size = EVENT_BYTES
        if self.size + size > self.limit and kind is not _RUN_END:
            if not self.overflowed and not self.stopped:
                self.overflowed = True
                if self.on_overflow is not None:
                    self.on_overflow()
            return
        self.size += size
        self.total.value += size
        self._items.append(event)
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def pop_all(self) -> list[RunEvent]:
        """Every event there is, oldest first; empty when there is none yet (then `await
        wait()`). Events already there cost the reader no coroutine."""
        items = self._items
        if not items:
            return []
        batch = list(items)
        items.clear()
        self.total.value -= self.size
        self.size = 0
        space = self._space
        if space is not None and not space.done():
            space.set_result(None)
        if self._waiters:
            self._wake_waiters()
        drained = self.on_drained
        if drained is not None:
            self.on_drained = None
            drained()
        return batch

    async def wait(self) -> None:
        """Wait until there are events to `pop_all`."""
        while not self._items:
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader

    def full(self) -> bool:
        return len(self._items) >= self.high_water and not self.stopped

    async def wait_below(self) -> None:
        """Wait until the reader has caught up below the high-water mark (or the run is over)."""
        while self.full():
            self._space = asyncio.get_running_loop().create_future()
            await self._space

    def when_below(self, waiter: concurrent.futures.Future) -> None:
        """`wait_below` for a worker thread: `waiter` is done once there is space."""
        if self.full():
            self._waiters.append(waiter)
        elif not waiter.done():
            waiter.set_result(None)

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def stop(self) -> None:
        """The run is over: producers still waiting for space go on (their events are dropped)."""
        self.stopped = True
        space = self._space
        if space is not None and not space.done():
            space.set_result(None)
        self._wake_waiters()

    def close(self) -> None:
        """The reader has gone: drop what is buffered, keep nothing more."""
        self.stop()
        self.closed = True
        self._items.clear()
        self.total.value -= self.size
        self.size = 0
        drained = self.on_drained
        if drained is not None:
            self.on_drained = None
            drained()
