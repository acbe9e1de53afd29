"""Per-run events: small immutable records with a per-run sequence number.

A run's events go to the sinks registered once at start-up (metrics, spans, logs)
and, when somebody streams the run, to that caller's buffer. Nothing is built
when neither is there.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Protocol

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


class EventBuffer:
    """The caller's per-run stream: an unbounded FIFO with one waiting reader.

    It is the run's own event sink: producers never block (`on_event` is
    synchronous); producers that can wait (the runner draining a streaming agent)
    call `wait_below` to get backpressure.
    """

    __slots__ = ("_items", "_reader", "_space", "high_water")

    def __init__(self, high_water: int = 256) -> None:
        self._items: deque[RunEvent] = deque()
        self._reader: asyncio.Future | None = None
        self._space: asyncio.Future | None = None
        self.high_water = high_water

    def on_event(self, event: RunEvent) -> None:
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
        space = self._space
        if space is not None and not space.done():
            space.set_result(None)
        return batch

    async def wait(self) -> None:
        """Wait until there are events to `pop_all`."""
        while not self._items:
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader

    async def wait_below(self) -> None:
        """Wait until the reader has caught up below the high-water mark."""
        while len(self._items) >= self.high_water:
            self._space = asyncio.get_running_loop().create_future()
            await self._space
