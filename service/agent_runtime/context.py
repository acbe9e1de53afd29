"""Per-run context, kept in a contextvar so concurrent runs never see each other's.

Agent and tool code reads it with `current_run()`; the Runner sets it inside the
run's own task, so it is isolated by asyncio's per-task context copies.
"""

from __future__ import annotations

import contextvars
import os
from threading import get_ident
from typing import TYPE_CHECKING, Any, Mapping

from .events import EventType

if TYPE_CHECKING:
    from .runner import Runner

_CHUNK = EventType.CHUNK

_current: contextvars.ContextVar["RunContext | None"] = contextvars.ContextVar(
    "agent_runtime_run", default=None
)


class RunContext:
    """Who a run is for and how to find it again; read-only by convention.

    A plain slotted class rather than a frozen dataclass: one is made per run, and
    a frozen dataclass's `__init__` costs three times as much."""

    __slots__ = ("run_id", "agent", "session_id", "user_id", "metadata", "streaming", "runner", "scratch")

    def __init__(self, run_id: str, agent: str, session_id: str, user_id: str,
                 metadata: Mapping[str, str] | None = None, streaming: bool = False,
                 runner: "Runner | None" = None) -> None:
        self.run_id = run_id
        self.agent = agent
        self.session_id = session_id
        self.user_id = user_id
        self.metadata = metadata if metadata is not None else {}
        self.streaming = streaming
        self.runner = runner
        # Per-run state of event sinks (a span, say), so sinks need no run-id maps.
        self.scratch: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"RunContext(run_id={self.run_id!r}, agent={self.agent!r}, session_id={self.session_id!r}, "
                f"user_id={self.user_id!r}, metadata={self.metadata!r}, streaming={self.streaming!r})")


def current_run() -> RunContext | None:
    """The context of the run this code executes in, or None outside a run."""
    return _current.get()


def emit_event(name: str, data: Any = None) -> None:
    """Emit a custom event from agent or tool code; a no-op outside a run."""
    run = _current.get()
    if run is not None and run.runner is not None:
        run.runner.emit_custom(name, data)


def emit_chunk(chunk: Any) -> None:
    """Stream a piece of output to the run's caller; a no-op outside a run.

    From a coroutine it cannot wait for a slow caller: past the stream's buffer the
    run fails (`await stream_chunk` waits instead). From a worker thread (a plain
    function) it is handed to the loop and waits while the caller's stream is full.

    Per streamed token this is the runtime's hot path: in the loop's thread it goes to
    the runner's `_emit` itself, a call less than through `Runner.emit_chunk`."""
    run = _current.get()
    if run is not None:
        runner = run.runner
        if runner is not None:
            if runner._thread == get_ident():
                runner._emit(_CHUNK, _CHUNK, {"chunk": chunk})
            else:
                runner.emit_chunk(chunk)


async def stream_chunk(chunk: Any) -> None:
    """`emit_chunk` that waits while the caller's stream lags behind (backpressure); a
    no-op outside a run."""
    run = _current.get()
    if run is not None and run.runner is not None:
        await run.runner.stream_chunk(chunk)


_ids: list[str] = []
# A forked child must not hand out the ids its parent has in its pool.
os.register_at_fork(after_in_child=_ids.clear)
_POOL = 256
_ID_SLICES = [slice(i, i + 32) for i in range(0, 32 * _POOL, 32)]


def new_id() -> str:
    """A random id of 32 hex digits (128 bits, as a uuid4's hex) for runs and sessions.

    Taken from a pool filled 256 ids at a time by one `os.urandom` call, cut up by
    `map` in C: a system call per id costs more than the rest of the id, and a Python
    loop to cut them cost more than the pool saved. `list.pop` and `extend` are
    atomic, so threads may share the pool."""
    try:
        return _ids.pop()
    except IndexError:
        _ids.extend(map(os.urandom(16 * _POOL).hex().__getitem__, _ID_SLICES))
        return _ids.pop()
