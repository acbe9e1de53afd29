"""Runner: one run's lifecycle, from admission to its end event, exactly once.

The agent runs in a task of its own, so the run can be cancelled, bounded by a
deadline and, if the agent ignores cancellation, abandoned after a grace period
with its slot freed. Whatever the outcome (ok, error, cancelled, timeout) the
Runner emits `run.end` once and gives the slot back once.

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
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping

from .agent import AgentSpec, CallKind
from .context import RunContext, _set, new_id
from .errors import AgentError, AgentRuntimeError, Draining, RunCancelled, RunTimeout
from .events import EventBuffer, EventType, RunEvent, RunStatus

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger("agent_runtime.run")

_END_STATUS = {RunTimeout: RunStatus.TIMEOUT, RunCancelled: RunStatus.CANCELLED}


class Runner:
    """Async context manager for one run: `async with session.run(input) as runner`."""

    def __init__(self, session: "Session", agent: AgentSpec, input: Any, *,
                 metadata: Mapping[str, str] | None = None, timeout: float | None = None) -> None:
        self.session = session
        self.manager = session.manager
        self.agent = agent
        self.input = input
        self.metadata = metadata or {}
        self.run_id = new_id()
        self.context: RunContext | None = None
        self.status: RunStatus | None = None
        self.queue_wait = 0.0
        self.duration = 0.0
        self.input_tokens = 0
        self.output_tokens = 0
        bounds = [t for t in (timeout, agent.timeout, self.manager.default_timeout) if t]
        self._timeout = min(bounds) if bounds else None
        self._deadline: float | None = None
        self._task: asyncio.Task | None = None
        self._done: asyncio.Future | None = None
        self._released: asyncio.Future | None = None
        self._buffer: EventBuffer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self._started = 0.0
        self._cancel_status: RunStatus | None = None
        self._cancel_reason: type[AgentRuntimeError] = RunCancelled
        self._ended = False
        self._abandoned = False
        self._admitted = False

    # -- admission ---------------------------------------------------------
    async def __aenter__(self) -> "Runner":
        self.queue_wait = await self.manager.admission.acquire(self.session.user_id, self.agent.name)
        self._admitted = True
        self._started = time.perf_counter()
        self.manager._runs[self.run_id] = self
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        task = self._task
        if task is None:
            self._release()
            return
        self._cancel(RunStatus.CANCELLED)
        if self._admitted:
            # Bounded: the task ends or is abandoned `cancel_grace` after the cancel.
            # If this wait is cancelled, the slot is still freed then, not now.
            self._released = asyncio.get_running_loop().create_future()
            await self._released

    def _release(self) -> None:
        """Give the slot back, once; called when the run's task is done or abandoned."""
        if self._admitted:
            self._admitted = False
            del self.manager._runs[self.run_id]
            self.manager.admission.release(self.session.user_id, self.agent.name,
                                           time.perf_counter() - self._started)
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
    async def result(self) -> Any:
        """Run the agent and return its output (chunks joined for a streaming agent)."""
        if self._task is None:
            self._start(streaming=False)
        try:
            return await self._done
        except asyncio.CancelledError:
            self._cancel_for_caller()
            raise

    async def events(self) -> AsyncIterator[RunEvent]:
        """Run the agent and yield every event of the run, `run.start` to `run.end`."""
        if self._task is not None:
            raise RuntimeError("this run has already started")
        buffer = self._buffer = EventBuffer()
        self._start(streaming=True)
        try:
            while True:
                event = await buffer.get()
                yield event
                if event.type is EventType.RUN_END:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            self._cancel_for_caller()
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
        if self._task is None or self._task.done():
            return False
        self._cancel_reason = reason
        self._cancel(RunStatus.CANCELLED)
        return True

    # -- the run's own task --------------------------------------------------
    def _start(self, streaming: bool) -> None:
        if not self._admitted:
            raise RuntimeError("use `async with session.run(...) as runner` before result()")
        loop = asyncio.get_running_loop()
        session = self.session
        self.context = RunContext(self.run_id, self.agent.name, session.session_id,
                                  session.user_id, self.metadata, streaming, self)
        self._done = loop.create_future()
        # The run's own context: sinks see it on run.start and run.end, the agent runs in it.
        context = contextvars.copy_context()
        context.run(_set, self.context)
        if self._wanted(EventType.RUN_START):
            context.run(self.emit, EventType.RUN_START, {"queue_wait": self.queue_wait})
        task = self._task = loop.create_task(self._execute(), context=context)
        task.add_done_callback(self._on_task_done, context=context)
        if self._timeout is not None:
            self._deadline = loop.time() + self._timeout
            self._timer = loop.call_at(self._deadline, self._cancel, RunStatus.TIMEOUT)

    async def _execute(self) -> Any:
        status, output, error = RunStatus.ERROR, None, ""
        agent = self.agent
        try:
            if agent.kind is CallKind.COROUTINE:
                output = await agent.call(self.input)
            elif agent.kind is CallKind.STREAM:
                output = await self._drain(agent.call(self.input))
            else:
                output = await self.manager.threads.call(agent.call, self.input)
            status = RunStatus.OK
            return output
        except asyncio.CancelledError:
            status = self._cancel_status or RunStatus.CANCELLED
            error = self._cancel_error().message
            raise
        except AgentRuntimeError as exc:
            status = _END_STATUS.get(type(exc), RunStatus.ERROR)
            error = exc.message
            exc.run_id = exc.run_id or self.run_id
            raise
        except BaseException as exc:  # SystemExit, KeyboardInterrupt too: they end this run only
            logger.error("run %s of agent %r failed", self.run_id, agent.name, exc_info=exc)
            error = (f"agent {agent.name!r} failed with {type(exc).__name__}; "
                     f"see the server log for run {self.run_id}")
            raise AgentError(error, run_id=self.run_id) from exc
        finally:
            self._end(status, output, error)

    async def _drain(self, stream: Any) -> Any:
        chunks = []
        buffer = self._buffer
        try:
            async for chunk in stream:
                chunks.append(chunk)
                self.emit(EventType.CHUNK, {"chunk": chunk})
                if buffer is not None:
                    await buffer.wait_below()
        finally:
            await stream.aclose()
        if all(isinstance(chunk, str) for chunk in chunks):
            return "".join(chunks)
        return chunks

    def emit(self, type: EventType, data: Mapping[str, Any]) -> None:
        """Record one event of this run and hand it to the sinks and the caller's stream.

        Events of an abandoned agent, after its run has ended, are dropped."""
        if self._ended:
            return
        seq = self._seq
        self._seq = seq + 1
        if type is EventType.LLM_END:
            self.input_tokens += data.get("input_tokens") or 0
            self.output_tokens += data.get("output_tokens") or 0
        sinks, buffer = self.manager.routes[type], self._buffer
        if not sinks and buffer is None:
            return
        event = RunEvent(self.context, seq, type, time.time(), data)
        for sink in sinks:
            try:
                sink.on_event(event)
            except Exception:
                logger.exception("event sink %r failed on %s", sink, type.value)
        if buffer is not None:
            buffer.put(event)

    def emit_chunk(self, chunk: Any) -> None:
        self.emit(EventType.CHUNK, {"chunk": chunk})

    async def stream_chunk(self, chunk: Any) -> None:
        """`emit_chunk`, then wait while the caller's stream lags behind (backpressure,
        as streaming agents get it), so a slow reader slows the producer instead of
        growing the buffer."""
        self.emit(EventType.CHUNK, {"chunk": chunk})
        if self._buffer is not None:
            await self._buffer.wait_below()

    def emit_custom(self, name: str, data: Any = None) -> None:
        self.emit(EventType.CUSTOM, {"name": name, "data": data})

    def _wanted(self, type: EventType) -> bool:
        """Whether a sink or the caller's stream wants events of `type` (else none is built)."""
        return bool(self.manager.routes[type]) or self._buffer is not None

    def _end(self, status: RunStatus, output: Any, error: str) -> None:
        if self._ended:
            return
        self.status = status
        self.duration = time.perf_counter() - self._started
        if self._wanted(EventType.RUN_END):
            self.emit(EventType.RUN_END, {
                "status": status, "output": output, "error": error, "duration": self.duration,
                "queue_wait": self.queue_wait, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens})
        self._ended = True

    # -- cancellation ------------------------------------------------------
    def _on_task_done(self, task: asyncio.Task) -> None:
        for timer in (self._timer, self._grace_timer):
            if timer is not None:
                timer.cancel()
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
        self._release()

    def _cancel_for_caller(self) -> None:
        """The caller went away: a deadline that has passed makes it a timeout."""
        deadline = self._deadline
        late = deadline is not None and asyncio.get_running_loop().time() >= deadline - 0.005
        self._cancel(RunStatus.TIMEOUT if late else RunStatus.CANCELLED)

    def _cancel(self, status: RunStatus) -> None:
        task = self._task
        if task is None or task.done() or self._cancel_status is not None:
            return
        self._cancel_status = status
        task.cancel()
        self._grace_timer = asyncio.get_running_loop().call_later(self.manager.cancel_grace, self._abandon)

    def _abandon(self) -> None:
        """Free a run whose agent ignores cancellation; its task is left to finish alone."""
        task = self._task
        if task is None or task.done() or self._abandoned:
            return
        self._abandoned = True
        error = self._cancel_error()
        logger.error("run %s of agent %r ignored cancellation for %gs; abandoning it "
                     "and freeing its slot", self.run_id, self.agent.name, self.manager.cancel_grace)
        self._end(self._cancel_status or RunStatus.CANCELLED, None, error.message)
        if not self._done.done():
            self._done.set_exception(error)
        self.manager._abandoned.add(task)
        task.add_done_callback(self.manager._abandoned.discard)
        self._release()

    def _cancel_error(self) -> AgentRuntimeError:
        if self._cancel_status is RunStatus.TIMEOUT:
            return RunTimeout(f"run exceeded its time limit of {self._timeout:g}s", run_id=self.run_id)
        if self._cancel_reason is Draining:
            return Draining("the server shut down before the run finished; retry on another replica",
                            run_id=self.run_id)
        return self._cancel_reason("run was cancelled", run_id=self.run_id)
