"""Per-run context, kept in a contextvar so concurrent runs never see each other's.

Agent and tool code reads it with `current_run()`; the Runner sets it inside the
run's own task, so it is isolated by asyncio's per-task context copies.
"""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .runner import Runner

_current: contextvars.ContextVar["RunContext | None"] = contextvars.ContextVar(
    "agent_runtime_run", default=None
)


@dataclass(frozen=True, slots=True)
class RunContext:
    """Who a run is for and how to find it again."""

    run_id: str
    agent: str
    session_id: str
    user_id: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    streaming: bool = False
    runner: "Runner | None" = field(default=None, repr=False, compare=False)
    # Per-run state of event sinks (a span, say), so sinks need no run-id maps.
    scratch: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def current_run() -> RunContext | None:
    """The context of the run this code executes in, or None outside a run."""
    return _current.get()


def emit_event(name: str, data: Any = None) -> None:
    """Emit a custom event from agent or tool code; a no-op outside a run."""
    run = _current.get()
    if run is not None and run.runner is not None:
        run.runner.emit_custom(name, data)


def emit_chunk(chunk: Any) -> None:
    """Stream a piece of output to the run's caller; a no-op outside a run."""
    run = _current.get()
    if run is not None and run.runner is not None:
        run.runner.emit_chunk(chunk)


def _set(run: RunContext) -> contextvars.Token:
    return _current.set(run)


def new_id() -> str:
    """A random id of 32 hex digits (128 bits, as a uuid4's hex) for runs and sessions:
    one system call, without building a UUID object on every call."""
    return os.urandom(16).hex()
