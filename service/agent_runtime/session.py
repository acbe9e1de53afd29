"""SessionManager and Session: where runs are admitted.

The SessionManager lives as long as the server. It knows the agents, owns the
admission control (slots, queue, per-user cap) and the event sinks, and finds
runs by id, and keeps the conversation history of sessions (a `HistoryStore`,
bounded and in memory by default). A Session is one user's conversation; each
`session.run(input)` is a Runner that holds a slot from its start to its end.
Sessions with the same user, session id and agent share history, so consecutive
calls (each gRPC call opens its own Session) continue one conversation. The gRPC servicer is
a thin skin over exactly this API, so Python and gRPC callers share limits.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

from .admission import Admission
from .agent import AgentSpec, agents_from
from .config import ConfigError
from .context import new_id
from .errors import AgentNotFound, Draining, InvalidInput
from .events import BufferedBytes, EventSink, EventType, routes
from .history import HistoryStore, InMemoryHistory, Message
from .runner import Runner
from .workers import WorkerThreads

logger = logging.getLogger("agent_runtime.session")

INLINE_RUNS_ENV = "AGENT_RUNTIME_INLINE_RUNS"


def inline_runs_from_env() -> bool:
    """`AGENT_RUNTIME_INLINE_RUNS`: whether awaited runs execute in their caller's task
    (the default, and the fast path) or each in an asyncio task of its own."""
    text = os.environ.get(INLINE_RUNS_ENV, "").strip().lower()
    if text in ("", "1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{INLINE_RUNS_ENV}: {text!r} is not valid: expected true or false")


class Session:
    """One user's conversation; `async with manager.session(user_id=...) as session`."""

    __slots__ = ("manager", "user_id", "session_id")

    def __init__(self, manager: "SessionManager", user_id: str, session_id: str) -> None:
        self.manager = manager
        self.user_id = user_id
        self.session_id = session_id

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        return None

    def run(self, input: Any, *, agent: str | None = None, metadata: Mapping[str, str] | None = None,
            timeout: float | None = None) -> Runner:
        """A run of `agent` (optional when one agent is served) on `input`."""
        manager = self.manager
        return Runner(manager, manager.agent(agent), input, self.user_id, self.session_id, metadata, timeout)

    def _history_key(self, agent: str) -> str:
        return "\x1f".join((self.user_id, self.session_id, agent))

    async def history(self, agent: str) -> list[Message]:
        """The messages of this session's earlier turns with `agent`."""
        return await self.manager.history.load(self._history_key(agent))

    async def remember(self, agent: str, messages: Sequence[Message]) -> None:
        """Add a finished turn with `agent` to this session's history."""
        await self.manager.history.append(self._history_key(agent), messages)


class SessionManager:
    """Admits runs of the served agents: `max_concurrency` slots (0 = unlimited),
    a FIFO queue of at most `max_queue` runs waiting at most `queue_timeout`
    seconds, and at most `per_user_limit` runs per user (0 = no cap).

    The agents are given as one agent, a list or a name mapping; or, as in NeMo
    Agent Toolkit, as `config` built by `shared_builder.build(config)`.

    `inline_runs` (default: `AGENT_RUNTIME_INLINE_RUNS`, else on) runs an awaited run's
    agent in its caller's task, the fast path; off, each agent runs in an asyncio task
    of its own, the standard path (`_inline.py` says why both exist).
    """

    def __init__(self, agent: Any = None, *, config: Any = None, shared_builder: Any = None,
                 max_concurrency: int = 8, max_queue: int = 100, queue_timeout: float = 30.0,
                 per_user_limit: int = 0, default_timeout: float | None = None,
                 cancel_grace: float = 5.0, sinks: Iterable[EventSink] = (),
                 history: HistoryStore | None = None, inline_runs: bool | None = None) -> None:
        if agent is None:
            if shared_builder is not None:
                agent = shared_builder.build(config)
            elif isinstance(config, Mapping):
                from .builder import AgentBuilder

                agent = AgentBuilder().build(config)
            else:
                agent = config
        if agent is None:
            raise ValueError("SessionManager needs an agent (or config and shared_builder)")
        self.agents: dict[str, AgentSpec] = agents_from(agent)
        self._only = next(iter(self.agents.values())) if len(self.agents) == 1 else None
        self.admission = Admission(max_concurrency, max_queue=max_queue,
                                   queue_timeout=queue_timeout, per_user_limit=per_user_limit)
        self.default_timeout = default_timeout or None
        self.cancel_grace = cancel_grace
        self.inline_runs = inline_runs_from_env() if inline_runs is None else inline_runs
        self.sinks: list[EventSink] = list(sinks)
        self.routes: dict[EventType, tuple[EventSink, ...]] = routes(self.sinks)
        self.history: HistoryStore = history if history is not None else InMemoryHistory()
        self._runs: dict[str, Runner] = {}
        self._abandoned: set[asyncio.Task] = set()
        self.buffered = BufferedBytes()  # what callers' streams hold unread (a metric)
        # Blocking agents and tools: enough threads for every slot twice over (hung ones included).
        self.threads = WorkerThreads(max(32, 2 * max_concurrency))

    @property
    def max_concurrency(self) -> int:
        return self.admission.limit

    @property
    def runs(self) -> Mapping[str, Runner]:
        """Runs holding a slot now, by run id."""
        return self._runs

    @property
    def abandoned(self) -> int:
        """Agents still executing after their runs were abandoned (they hold no slot)."""
        return len(self._abandoned)

    @property
    def busy(self) -> int:
        """Runs holding a slot, abandoned agents and worker threads still executing."""
        return len(self._runs) + len(self._abandoned) + self.threads.busy

    def add_sink(self, sink: EventSink) -> None:
        self.sinks.append(sink)
        self.routes = routes(self.sinks)

    def session(self, user_id: str = "", session_id: str | None = None) -> Session:
        return Session(self, user_id, session_id or new_id())

    def agent(self, name: str | None = None) -> AgentSpec:
        """The agent called `name`; with no name, the only agent served."""
        if not name:
            if self._only is not None:
                return self._only
            raise InvalidInput(f"this server serves several agents ({', '.join(self.agents)}); "
                               "name one in the request's `agent` field")
        try:
            return self.agents[name]
        except KeyError:
            raise AgentNotFound(f"no agent named {name!r}; served agents: "
                                f"{', '.join(self.agents)}") from None

    async def aclose(self) -> None:
        """Release what the agents hold (an Agent's pooled model connections) and the
        worker threads; idempotent."""
        self.threads.shutdown()
        for spec in self.agents.values():
            close = getattr(spec.target, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    logger.exception("closing agent %r failed", spec.name)

    def cancel_run(self, run_id: str) -> bool:
        runner = self._runs.get(run_id)
        return runner is not None and runner.cancel()

    async def drain(self, timeout: float) -> int:
        """Admit no new runs, let runs in progress or queued finish for `timeout`
        seconds, then cancel the rest; returns how many were cancelled."""
        admission = self.admission
        admission.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (admission.in_use or admission.waiting) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        admission.refuse_waiting()
        leftover = [runner for runner in self._runs.values() if runner.cancel(Draining)]
        if leftover:
            logger.warning("drain timeout of %gs passed; cancelling %d runs", timeout, len(leftover))
            end = loop.time() + self.cancel_grace + 0.1
            while self._runs and loop.time() < end:
                await asyncio.sleep(0.02)
        return len(leftover)
