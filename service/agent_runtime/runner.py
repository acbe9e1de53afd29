"""Runner: one run's lifecycle, from admission to its end event, exactly once.

The agent runs in a task of its own, so the run can be cancelled, bounded by a
deadline and, if the agent ignores cancellation, abandoned after a grace period
with its slot freed. Whatever the outcome (ok, error, cancelled, timeout) the
Runner emits `run.end` once and gives the slot back once.

A run the caller awaits (`result()`) executes in the caller's own task, in a
context of its own that the inline driver (`_inline.drive`) steps it in, as a task
of its own would; with `inline_runs` off (`AGENT_RUNTIME_INLINE_RUNS=false`) it gets
an asyncio task of its own, eagerly started on Python 3.12+. A streamed run
(`events()`) gets its own task, since the agent and the reader go on at once. The
agent sees the same either way: its own contextvars, one current task from start
to end, cancellation at an `await`.

Cancellation contract for agent code: a run is cancelled by raising
`asyncio.CancelledError` at an `await`; agents should let it propagate (after
their own clean-up). An agent still running `cancel_grace` seconds later is
abandoned: reported as ended, its slot freed, and logged.

The slot is given back when the agent's task is done or abandoned, never
earlier (not even when the caller is cancelled while waiting for that), so the
agents executing at once never exceed the limit except for abandoned ones.
Whatever an agent raises, `SystemExit` and `KeyboardInterrupt` included, ends
its own run as an error and nothing else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import sys
import time
from threading import get_ident
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Coroutine, Mapping

from . import _inline
from .agent import AgentSpec, CallKind
from .context import RunContext, _current, new_id
from .errors import AgentError, AgentRuntimeError, Draining, RunCancelled, RunTimeout, StreamOverflow
from .events import EventBuffer, EventSink, EventType, RunEvent, RunStatus

if TYPE_CHECKING:
    from .session import Session, SessionManager

logger = logging.getLogger("agent_runtime.run")

_END_STATUS = {RunTimeout: RunStatus.TIMEOUT, RunCancelled: RunStatus.CANCELLED}


_new_event = tuple.__new__


def _start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                context: contextvars.Context) -> asyncio.Task:
    """A task of the run's own for `result()` with `inline_runs` off; on Python 3.12+
    eagerly started, so its first step is taken at once, as the inline driver takes it."""
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, context=context, eager_start=True)
    return loop.create_task(coro, context=context)


class Runner:
    """Async context manager for one run: `async with session.run(input) as runner`.

    What every run sets lives in slots; what only some runs need (their timers,
    cancellation, listeners, streaming) is read from the class defaults below until a
    run sets it, so a run that needs none of it never pays for it."""

    __slots__ = ("manager", "agent", "input", "metadata", "run_id", "user_id", "session_id", "context", "status",
                 "duration", "_timeout", "_task", "_inline", "_running", "_started", "_ended", "_admitted",
                 "_outcome", "_listeners", "_loose_ends", "_thread", "_loop", "__dict__")

    queue_wait = 0.0
    input_tokens = 0
    output_tokens = 0
    _deadline: float | None = None
    _done: asyncio.Future | None = None
    _released: asyncio.Future | None = None
    _buffer: EventBuffer | None = None  # the caller's stream, one of the listeners
    _timer: asyncio.TimerHandle | None = None
    _grace_timer: asyncio.TimerHandle | None = None
    _seq = 0
    _cancel_status: RunStatus | None = None
    _cancel_reason: type[AgentRuntimeError] = RunCancelled
    _cancels = 0  # cancels this run asked of its caller's task, undone when it ends
    _cancelling = 0  # the caller's task's outstanding cancels when the run began
    _abandoned = False

    def __init__(self, manager: "SessionManager", agent: AgentSpec, input: Any, user_id: str = "",
                 session_id: str = "", metadata: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> None:
        """A run of `agent` for `user_id` in session `session_id`; a run that names no
        session starts one, called by the run's id (a unary call needs no second id).

        Callers on the hot path pass the arguments by position: keywords to a class
        cost a dict per call (about 2k instructions, callgrind says)."""
        self.manager = manager
        self.agent = agent
        self.input = input
        self.metadata = metadata or {}
        self.run_id = run_id = new_id()
        self.user_id = user_id
        self.session_id = session_id or run_id
        self.context: RunContext | None = None
        self.status: RunStatus | None = None
        self.duration = 0.0
        # The tightest of the run's, the agent's and the server's time limits (0 or None: none).
        limit = agent.timeout
        default = manager.default_timeout
        if default and not (limit and limit <= default):
            limit = default
        if timeout and not (limit and limit <= timeout):
            limit = timeout
        self._timeout = limit or None
        self._task: asyncio.Task | None = None  # the task the agent executes in: the caller's
        self._inline = False  # own (result()) or the run's (events())
        self._running = False
        self._started = 0.0
        self._ended = False
        self._admitted = False
        self._outcome: tuple[bool, Any] = (False, None)  # of an inline run, for a second result()
        self._listeners: tuple[EventSink, ...] = ()
        # Set once a grace timer, a wait for the release or a streamed run's future exists:
        # what `_release` settles besides the slot (most runs have none of them).
        self._loose_ends = False

    @property
    def session(self) -> "Session":
        """The session this run belongs to (its history, for agents that keep one)."""
        from .session import Session

        return Session(self.manager, self.user_id, self.session_id)

    # -- admission ---------------------------------------------------------
    async def __aenter__(self) -> "Runner":
        if self._admitted or self._task is not None:
            raise RuntimeError("a run is admitted once; start another with session.run()")
        if self.manager.admission.take(self.user_id, self.agent.name):
            self._hold()
        else:
            await self._queue_for_slot()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if not self._running:
            if self._admitted:  # never started
                self._release()
            return
        self._cancel(RunStatus.CANCELLED)
        if self._admitted:
            # Bounded: the agent ends or is abandoned `cancel_grace` after the cancel.
            # If this wait is cancelled, the slot is still freed then, not now.
            self._loose_ends = True
            self._released = asyncio.get_running_loop().create_future()
            await self._released

    async def _queue_for_slot(self) -> None:
        """Wait for a slot after `Admission.take` said there was none free; a refusal raises
        (`Overloaded`, `Draining`), as `take`'s do."""
        self.queue_wait = await self.manager.admission.queue(self.user_id, self.agent.name)
        self._hold()

    def _hold(self) -> None:
        self._admitted = True
        self._started = time.perf_counter()
        self.manager._runs[self.run_id] = self

    def _release(self) -> None:
        """Stop the run's timers and give the slot back, once; called when the agent is
        done or abandoned (or never started).

        The run's context lets go of the runner here: left in place, that cycle kept
        every run's objects (the caller's task and reply among them) alive until the
        garbage collector's next pass."""
        self._running = False
        if self._timeout is not None and self._timer is not None:
            self._timer.cancel()
        if self.context is not None:
            self.context.runner = None
        if self._admitted:
            self._admitted = False
            del self.manager._runs[self.run_id]
            held = self.duration if self._ended else time.perf_counter() - self._started  # ended just now
            self.manager.admission.release(self.user_id, self.agent.name, held)
        if self._loose_ends:
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            released = self._released
            if released is not None and not released.done():
                released.set_result(None)
            done = self._done
            if done is not None and done.done() and not done.cancelled():
                done.exception()  # retrieved: a failure nobody awaited is not an unhandled error

    @property
    def abandoned(self) -> bool:
        """Whether the agent ignored cancellation and was left running without a slot."""
        return self._abandoned

    # -- the caller's side -------------------------------------------------
    async def result(self, reply: Callable[["Runner", Any], Any] | None = None) -> Any:
        """Run the agent and return its output (chunks joined for a streaming agent).

        A run not entered with `async with` is admitted here, for as long as it runs:
        `await session.run(input).result()` is a whole run in one coroutine, as a unary
        call runs it. Awaited again, it gives the same outcome.

        With `reply`, what is returned is `reply(runner, output)`, made before the run
        ends: a reply that cannot be made (it raises) ends the run with that error, so
        the run's status is the one its caller sees."""
        if self._task is not None:
            if self._inline:  # awaited again: the same outcome
                if self._running:
                    raise RuntimeError("this run's result is already being awaited")
                ok, value = self._outcome
                if ok:
                    return value
                raise value
            if self._buffer is None and self._running:  # started by result() in a task of its own
                raise RuntimeError("this run's result is already being awaited")
            try:  # started by events(), or by result() in a task of its own: its outcome
                return await self._done
            except asyncio.CancelledError:
                self._cancel_for_caller()
                raise
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Runner.result() must be awaited in a task")
        if not self._admitted:  # admitted as __aenter__ admits, inline: a call less a run
            if self.manager.admission.take(self.user_id, self.agent.name):
                self._hold()
            else:
                await self._queue_for_slot()
        if not self.manager.inline_runs:
            return await self._result_of_task(reply)
        self._task, self._inline = task, True
        cancelling = task.cancelling()
        if cancelling:
            self._cancelling = cancelling
        context = self._begin(False)
        try:
            agent = self.agent  # an async agent called at once: a frame less than through _agent_coroutine
            coro = (context.run(agent.call, self.input) if agent.kind is CallKind.COROUTINE
                    else context.run(self._agent_coroutine))
            try:
                # The first step at once, as asyncio's eager tasks take it: an agent that
                # finishes without waiting needs nothing more.
                pending = context.run(coro.send, None)
            except StopIteration as stop:
                output = stop.value
            else:
                output = await _inline.drive(context, coro, pending, self._cancel_outstanding,
                                             lambda: self._abandoned, self._track_abandoned)
            answer = output if reply is None else reply(self, output)
        except BaseException as exc:
            failure = context.run(self._failed, exc)
            if isinstance(failure, asyncio.CancelledError):
                # Cancels this run asked for (timeout, CancelRun, drain) end as its error; a
                # cancellation of the caller itself goes on.
                self._uncancel()
                if task.cancelling() > cancelling or self._cancel_status is None:
                    raise
                failure = self._cancel_error()
                self._outcome = (False, failure)
                raise failure from None
            self._outcome = (False, failure)
            if failure is exc:
                raise
            raise failure from exc
        else:
            self._end(RunStatus.OK, output, "", context)
            self._outcome = (True, answer)
            return answer
        finally:
            if self._cancels:
                self._uncancel()
            if not self._abandoned:
                self._release()

    async def _result_of_task(self, reply: Callable[["Runner", Any], Any] | None) -> Any:
        """`result()` with the agent in an asyncio task of its own (`inline_runs` off), as
        `events()` runs it. A cancelled caller waits, as an inline one does, until the
        agent has ended or been abandoned, so the slot is never freed early."""
        context = self._begin(False)
        loop = asyncio.get_running_loop()
        self._loose_ends = True
        done = self._done = loop.create_future()
        task = self._task = _start_task(loop, self._execute(reply), context)
        task.add_done_callback(self._on_task_done, context=context)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self._cancel_for_caller()
            if self._admitted:
                self._released = loop.create_future()
                await self._released
            raise

    async def events(self) -> AsyncIterator[RunEvent]:
        """Run the agent and yield every event of the run, `run.start` to `run.end`."""
        batches = self.event_batches()
        try:
            async for batch in batches:
                for event in batch:
                    yield event
        finally:
            await batches.aclose()

    async def event_batches(self) -> AsyncIterator[list[RunEvent]]:
        """Run the agent and yield its events in batches, `run.start` first and `run.end`
        last: each batch is every event produced since the reader came back for more.

        A reader that awaits between events (a gRPC stream awaits each write) resumes
        this generator once a batch instead of once an event, which was a fifth of what a
        streamed chunk cost the runtime over a bare grpc.aio stream. Taking a batch frees a producer held back by
        the buffer's high-water mark, so twice that many events may be in memory."""
        if self._task is not None:
            raise RuntimeError("this run has already started")
        buffer = self._buffer = EventBuffer(self.manager.buffered)
        buffer.on_overflow = self._overflow
        self.listen(buffer)
        context = self._begin(streaming=True)
        loop = asyncio.get_running_loop()
        self._loose_ends = True
        self._done = loop.create_future()
        task = self._task = loop.create_task(self._execute(), context=context)
        task.add_done_callback(self._on_task_done, context=context)
        try:
            while True:
                batch = buffer.pop_all()
                if not batch:
                    await buffer.wait()
                    continue
                yield batch
                if batch[-1].type is EventType.RUN_END:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            self._cancel_for_caller()
            buffer.close()
            raise

    async def result_stream(self) -> AsyncIterator[Any]:
        """Run the agent and yield its output chunks as they come.

        A non-streaming agent yields its whole output as one chunk. A run that
        fails raises its error after the chunks it produced.
        """
        chunked = False
        async for event in self.events():
            if event.type is EventType.CHUNK:
                chunked = True
                yield event.data["chunk"]
            elif event.type is EventType.RUN_END:
                if event.data["status"] is not RunStatus.OK:
                    await self._done
                elif not chunked:
                    yield event.data["output"]

    def cancel(self, reason: type[AgentRuntimeError] = RunCancelled) -> bool:
        """Cancel this run (as `CancelRun` does); False when it is not running.

        `reason` is the error its caller gets: `Draining` when the server shuts down."""
        if not self._running:
            return False
        self._cancel_reason = reason
        self._cancel(RunStatus.CANCELLED)
        return True

    # -- the agent's execution ----------------------------------------------
    def _begin(self, streaming: bool) -> contextvars.Context:
        """Start the run's clock and events; returns the context the agent executes in."""
        if not self._admitted:
            raise RuntimeError("use `async with session.run(...) as runner` before result()")
        run = self.context = RunContext(self.run_id, self.agent.name, self.session_id,
                                        self.user_id, self.metadata, streaming, self)
        self._running = True
        self._thread = get_ident()  # events from any other thread go through `_loop`
        self._loop = loop = asyncio.get_running_loop()
        # The run's own context: sinks see it on run.start and run.end, the agent runs in it.
        context = contextvars.copy_context()
        context.run(_current.set, run)
        # Whether anybody wants the run's events (when nobody does, none is built): a sink
        # routed for them or a listener of this run. Asked where an event may be built, inline.
        if self.manager.routes[EventType.RUN_START] or self._listeners:
            context.run(self._emit, EventType.RUN_START, EventType.RUN_START, {"queue_wait": self.queue_wait})
        if self._timeout is not None:
            self._deadline = loop.time() + self._timeout
            self._timer = loop.call_at(self._deadline, self._cancel, RunStatus.TIMEOUT)
        return context

    def _agent_coroutine(self) -> Coroutine[Any, Any, Any]:
        """The coroutine that runs the agent on the run's input, whatever kind it is (called
        in the run's context: calling an agent may run code of its own)."""
        agent = self.agent
        if agent.kind is CallKind.COROUTINE:
            return agent.call(self.input)
        if agent.kind is CallKind.STREAM:
            return self._drain(agent.call(self.input))
        return self.manager.threads.call(agent.call, self.input)

    async def _execute(self, reply: Callable[["Runner", Any], Any] | None = None) -> Any:
        """The agent's run in a task of its own (events(), or result() with inline runs off),
        ended as result() ends it inline; with `reply`, returns the reply made before the end."""
        try:
            output = await self._agent_coroutine()
            if self._cancel_status is not None:  # cancelled after its last await (an overflow, say)
                raise asyncio.CancelledError
            answer = output if reply is None else reply(self, output)
        except BaseException as exc:
            failure = self._failed(exc)
            if failure is exc:
                raise
            raise failure from exc
        self._end(RunStatus.OK, output, "")
        return answer

    def _failed(self, exc: BaseException) -> BaseException:
        """End the run for what its agent raised; returns what its caller gets: a
        cancellation or a domain error as raised (with this run's id), anything else
        (`SystemExit` and `KeyboardInterrupt` too: they end this run only) as AgentError."""
        if isinstance(exc, asyncio.CancelledError):
            self._end(self._cancel_status or RunStatus.CANCELLED, None, self._cancel_error().message)
            return exc
        if isinstance(exc, AgentRuntimeError):
            exc.run_id = exc.run_id or self.run_id
            self._end(_END_STATUS.get(type(exc), RunStatus.ERROR), None, exc.message)
            return exc
        name = self.agent.name
        logger.error("run %s of agent %r failed", self.run_id, name, exc_info=exc)
        error = AgentError(f"agent {name!r} failed with {type(exc).__name__}; "
                           f"see the server log for run {self.run_id}", run_id=self.run_id)
        self._end(RunStatus.ERROR, None, error.message)
        return error

    async def _drain(self, stream: Any) -> Any:
        chunks = []
        buffer = self._buffer
        try:
            async for chunk in stream:
                chunks.append(chunk)
                self.emit_chunk(chunk)
                if buffer is not None:
                    await buffer.wait_below()
        finally:
            await stream.aclose()
        if all(isinstance(chunk, str) for chunk in chunks):
            return "".join(chunks)
        return chunks

    def emit(self, type: EventType, data: Mapping[str, Any]) -> None:
        """Record one event of this run and hand it to the sinks and the run's listeners
        (the caller's stream among them); from a worker thread, see `_from_thread`.

        Events of an abandoned agent, after its run has ended, are dropped."""
        if get_ident() != self._thread:
            self._from_thread(self.emit, type, data)
            return
        if type is EventType.LLM_END and not self._ended:
            self.input_tokens += data.get("input_tokens") or 0
            self.output_tokens += data.get("output_tokens") or 0
        self._emit(type, type, data)

    def _emit(self, route: Any, type: EventType, data: Mapping[str, Any]) -> None:
        """`emit`, to the sinks routed under `route` (the run's status for run.end).

        Per streamed chunk this is the runtime's hot path: the event is built with
        tuple.__new__ (a RunEvent without NamedTuple's Python-level __new__), and the
        sinks and listeners are one tuple (`() + listeners` is `listeners` itself)."""
        if self._ended:
            return
        seq = self._seq
        self._seq = seq + 1
        receivers = self.manager.routes[route] + self._listeners
        if not receivers:
            return
        event = _new_event(RunEvent, (self.context, seq, type, time.time(), data))
        for sink in receivers:
            try:
                sink.on_event(event)
            except Exception:
                logger.exception("event sink %r failed on %s", sink, type.value)

    def listen(self, sink: EventSink) -> None:
        """Hand this run's events, and no other run's, to `sink` too (from before the run starts)."""
        if self._task is not None:
            raise RuntimeError("listen() before the run starts")
        self._listeners = (*self._listeners, sink)

    def emit_chunk(self, chunk: Any) -> None:
        if get_ident() != self._thread:
            self._from_thread(self._emit, EventType.CHUNK, EventType.CHUNK, {"chunk": chunk})
        else:
            self._emit(EventType.CHUNK, EventType.CHUNK, {"chunk": chunk})

    def _from_thread(self, emit: Any, *args: Any) -> None:
        """`emit(*args)` for a worker thread (a plain-function agent or tool): done in the
        loop's thread, where the run's futures and the sinks live, while this thread waits,
        and for as long as the caller's stream is full (backpressure, as streaming agents
        get it). Once the loop has closed the run is over, and the event is dropped."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._loop.call_soon_threadsafe(self._emitted, done, emit, args)
        except RuntimeError:
            return
        done.result()

    def _emitted(self, done: concurrent.futures.Future, emit: Any, args: tuple) -> None:
        try:
            emit(*args)
        finally:
            buffer = self._buffer
            if buffer is None:
                done.set_result(None)
            else:
                buffer.when_below(done)

    def _overflow(self) -> None:
        """The caller left more events unread than the buffer holds, and their producer
        cannot wait: the run fails (RESOURCE_EXHAUSTED) rather than grow without bound."""
        if self._running and self._cancel_status is None:
            self._cancel_reason = StreamOverflow
            self._cancel(RunStatus.ERROR)

    async def stream_chunk(self, chunk: Any) -> None:
        """`emit_chunk`, then wait while the caller's stream lags behind (backpressure,
        as streaming agents get it), so a slow reader slows the producer instead of
        growing the buffer."""
        self.emit_chunk(chunk)
        if self._buffer is not None:
            await self._buffer.wait_below()

    def emit_custom(self, name: str, data: Any = None) -> None:
        self.emit(EventType.CUSTOM, {"name": name, "data": data})

    def _end(self, status: RunStatus, output: Any, error: str, context: contextvars.Context | None = None) -> None:
        """End the run once; its run.end, when anybody wants it, is emitted in `context` (an
        inline run's own, given from outside it) so sinks see the run's contextvars."""
        if self._ended:
            return
        self.status = status
        self.duration = duration = time.perf_counter() - self._started
        if self.manager.routes[status] or self._listeners:
            data = {"status": status, "output": output, "error": error, "duration": duration,
                    "queue_wait": self.queue_wait, "input_tokens": self.input_tokens,
                    "output_tokens": self.output_tokens}
            if context is not None:
                context.run(self._emit, status, EventType.RUN_END, data)
            else:
                self._emit(status, EventType.RUN_END, data)
        self._ended = True
        if self._buffer is not None:
            self._buffer.stop()

    # -- cancellation ------------------------------------------------------
    def _on_task_done(self, task: asyncio.Task) -> None:
        done = self._done
        if task.cancelled():
            # Also a task cancelled before its first step: its `finally` never ran.
            error = self._cancel_error()
            self._end(self._cancel_status or RunStatus.CANCELLED, None, error.message)
            if not done.done():
                done.set_exception(error)
        else:
            exc = task.exception()
            if not done.done():
                if exc is None:
                    done.set_result(task.result())
                else:
                    done.set_exception(exc)
        if self._abandoned:
            return
        buffer = self._buffer  # none when result() ran the agent in a task (inline runs off)
        if buffer is not None and buffer.size and not buffer.closed:
            # The slot covers what the caller has yet to read, not only the agent's time.
            self._running = False
            buffer.on_drained = self._release
        else:
            self._release()

    def _caller_gone_status(self) -> RunStatus:
        """How a run ends whose caller went away: a deadline that has passed makes it a timeout."""
        deadline = self._deadline
        late = deadline is not None and asyncio.get_running_loop().time() >= deadline - 0.005
        return RunStatus.TIMEOUT if late else RunStatus.CANCELLED

    def _cancel_for_caller(self) -> None:
        """The caller of a streamed run went away."""
        self._cancel(self._caller_gone_status())

    def _caller_cancelled(self) -> bool:
        """Whether an inline run's task has a cancellation outstanding that is not this
        run's own: its caller's, or a cancel scope's of the agent itself."""
        return self._task.cancelling() > self._cancelling + self._cancels

    def _arm_grace(self) -> None:
        """(Re)start the `cancel_grace` the agent gets before `_abandon`."""
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self._loose_ends = True
        self._grace_timer = asyncio.get_running_loop().call_later(self.manager.cancel_grace, self._abandon)

    def _cancel_task(self) -> None:
        """Cancel the task the agent executes in; a caller's task, this run takes it back."""
        if self._inline:
            self._cancels += 1
        self._task.cancel()

    def _cancel(self, status: RunStatus) -> None:
        if not self._running or self._cancel_status is not None:
            return
        self._cancel_status = status
        if self._inline and self._caller_cancelled():
            # The agent has a cancellation already (its caller's); a second one would cut
            # short what it does about the first.
            if self._grace_timer is None:
                self._arm_grace()
            return
        self._cancel_task()
        self._arm_grace()

    def _uncancel(self) -> None:
        """Take back the cancels this run asked of its caller's task."""
        while self._cancels:
            self._cancels -= 1
            self._task.uncancel()

    def _abandon(self) -> None:
        """Free a run whose agent ignores cancellation; the agent is left to finish alone."""
        if not self._running or self._abandoned:
            return
        if self._cancel_status is None:  # a cancellation this run did not ask for (`_inline`)
            if not self._caller_cancelled():
                self._grace_timer = None  # taken back: it was the agent's own
                return
            self._cancel_status = self._caller_gone_status()
        self._abandoned = True
        error = self._cancel_error()
        logger.error("run %s of agent %r ignored cancellation for %gs; abandoning it "
                     "and freeing its slot", self.run_id, self.agent.name, self.manager.cancel_grace)
        self._end(self._cancel_status or RunStatus.CANCELLED, None, error.message)
        if self._inline:
            self._cancel_task()  # the caller wakes, and `_inline.drive` detaches the agent
        else:
            if not self._done.done():
                self._done.set_exception(error)
            self._track_abandoned(self._task)
        self._release()

    def _cancel_outstanding(self) -> bool:
        """Whether an inline run's agent has a cancellation outstanding that its grace is
        counting; a caller's cancellation not yet seen (or an agent's own cancel scope's,
        taken back soon) starts the grace, which abandons the agent if it is still
        outstanding by then."""
        if self._grace_timer is None:
            if self._task.cancelling() <= self._cancelling + self._cancels:  # `_caller_cancelled`, a call less a step
                return False
            self._arm_grace()
        return True

    def _track_abandoned(self, task: asyncio.Task) -> None:
        abandoned = self.manager._abandoned
        abandoned.add(task)
        task.add_done_callback(abandoned.discard)

    def _cancel_error(self) -> AgentRuntimeError:
        if self._cancel_status is RunStatus.TIMEOUT:
            return RunTimeout(f"run exceeded its time limit of {self._timeout:g}s", run_id=self.run_id)
        if self._cancel_reason is StreamOverflow:
            return StreamOverflow(f"the caller left more than {self._buffer.limit} bytes of events unread; "
                                  "a streaming agent that cannot wait for its reader was stopped "
                                  "(agents: await stream_chunk instead of emit_chunk)", run_id=self.run_id)
        if self._cancel_reason is Draining:
            return Draining("the server shut down before the run finished; retry on another replica",
                            run_id=self.run_id)
        return self._cancel_reason("run was cancelled", run_id=self.run_id)
