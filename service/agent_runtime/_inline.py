"""The inline driver: a coroutine awaited inside the awaiting task, stepped in a
context of its own as a task of its own would step it.

`Runner.result()` runs its agent this way by default: a task per run, and the two
wake-ups it costs, were a third of the runtime's overhead on a unary call
(docs/design.md). It relies on a detail private to asyncio: a Task awaits a future
that a coroutine yields only when the future's `_asyncio_future_blocking` is set, so
a driver that awaits a stand-in in place of what the agent waits on, or hands the
agent on to a task of its own, must set it as the Task expects. Hence this module
and its one function, and a switch back to the standard path: with
`AGENT_RUNTIME_INLINE_RUNS=false` (or `SessionManager(inline_runs=False)`) every
agent runs in an asyncio task of its own, eagerly started on Python 3.12+. The
runner's test suites run in both modes.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from typing import Any, Callable, Coroutine

from .errors import AgentRuntimeError


@types.coroutine
def drive(context: contextvars.Context, coro: Coroutine[Any, Any, Any], pending: Any,
          outstanding: Callable[[], bool] | None = None, abandoned: Callable[[], bool] | None = None,
          adopt: Callable[[asyncio.Task], None] | None = None) -> Any:
    """Await `coro`, which has taken its first step and waits on `pending`, stepping it
    in `context`.

    What is thrown at the awaiting task (a cancellation) goes on into `coro`. While
    `outstanding()` says a cancellation is outstanding (its caller's, or one of the
    agent's own cancel scopes'), `coro` is awaited through a stand-in future: if
    `abandoned()` holds when the awaiting task wakes, `coro` goes on undisturbed in
    a task of its own, handed to `adopt`, and what woke the awaiting task is raised."""
    step = context.run
    try:
        while True:
            waited = pending
            if outstanding is not None and outstanding() and hasattr(pending, "add_done_callback"):
                waited = _stand_in(pending)
            try:
                sent = yield waited
            except BaseException as exc:
                if abandoned is not None and abandoned():
                    if hasattr(pending, "_asyncio_future_blocking"):
                        pending._asyncio_future_blocking = True  # as the agent's `await` left it
                    task = asyncio.get_running_loop().create_task(_detached(context, coro, pending))
                    if adopt is not None:
                        adopt(task)
                    raise
                if waited is not pending and isinstance(exc, asyncio.CancelledError):
                    pending.cancel()  # as a task's cancel() cancels what it waits on
                pending = step(coro.throw, exc)
            else:
                pending = step(coro.send, sent)
    except StopIteration as stop:
        return stop.value


def _stand_in(future: asyncio.Future) -> asyncio.Future:
    """A future done when `future` is, and cancellable without cancelling it."""
    stand_in = future.get_loop().create_future()
    future.add_done_callback(lambda _: stand_in.done() or stand_in.set_result(None))
    future._asyncio_future_blocking = False
    stand_in._asyncio_future_blocking = True
    return stand_in


async def _detached(context: contextvars.Context, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
    try:
        await drive(context, coro, pending)
    except (AgentRuntimeError, asyncio.CancelledError):
        pass  # the run has ended; how its abandoned agent ends at last is moot
