"""The run registry: a record of every run (agent, user, session, times, the replica
that holds it and, once it has ended, its end event) for `GetRun`.

Both registries are event sinks of run.start and run.end. `MemoryRuns` answers for
this replica's runs (in progress, and the last `max_ended` ended ones) when no
store is configured. `RedisRuns` writes each record to the store through the
`StoreWriter` (never waiting on the store in a run's task) so that every replica
answers for every run; the holder renews a lease on the runs it holds, and a
record expires `ttl` seconds after its last write.

End events are kept encoded (`encode`, the wire form of the `ended` event), so
every replica answers with the bytes the run's own stream carried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..context import RunContext
from ..errors import StoreUnavailable
from ..events import EventType, RunEvent
from .connection import Store
from .writer import StoreWriter

logger = logging.getLogger("agent_runtime.store")

Encode = Callable[[RunEvent], bytes]


def replica_id() -> str:
    """This process among the replicas: its host name (a pod's name) and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    agent: str
    user_id: str
    session_id: str
    created: float  # Unix time of run.start
    replica: str
    end: bytes | None = None  # the encoded run.end event; None while the run is in progress
    end_seq: int | None = None  # its seq


class RunRegistry(Protocol):
    event_types: frozenset[EventType]

    def on_event(self, event: RunEvent) -> None: ...

    async def get(self, run_id: str) -> RunRecord | None:
        """The run's record; None when it is unknown (or expired)."""
        ...

    def start(self) -> None: ...

    async def aclose(self) -> None: ...


_RUN_EVENTS = frozenset({EventType.RUN_START, EventType.RUN_END})


class MemoryRuns:
    """This replica's runs: those in progress, and the `max_ended` that ended last."""

    event_types = _RUN_EVENTS

    def __init__(self, encode: Encode, max_ended: int = 10_000) -> None:
        self.encode = encode
        self.max_ended = max_ended
        self.replica = replica_id()
        self._running: dict[str, tuple[RunContext, float]] = {}  # run id -> (run, created)
        self._ended: OrderedDict[str, tuple[float, RunEvent]] = OrderedDict()

    def on_event(self, event: RunEvent) -> None:
        run = event.run
        if event.type is EventType.RUN_START:
            self._running[run.run_id] = (run, event.time)
            return
        _, created = self._running.pop(run.run_id, (run, event.time))
        ended = self._ended
        ended[run.run_id] = (created, event)
        if len(ended) > self.max_ended:
            ended.popitem(last=False)

    async def get(self, run_id: str) -> RunRecord | None:
        ended = self._ended.get(run_id)
        if ended is not None:
            created, event = ended
            return _record(event.run, created, self.replica, self.encode(event), event.seq)
        running = self._running.get(run_id)
        if running is not None:
            return _record(running[0], running[1], self.replica, None, None)
        return None

    def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _record(run: RunContext, created: float, replica: str, end: bytes | None, end_seq: int | None) -> RunRecord:
    return RunRecord(run.run_id, run.agent, run.user_id, run.session_id, created, replica, end, end_seq)


# ARGV[1] the TTL (ms); then per record: its key, a field count n, n field/value pairs.
_WRITE = """
local ttl = ARGV[1]
local i = 2
while i <= #ARGV do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', key, unpack(ARGV, i + 2, i + 1 + 2 * n))
  redis.call('PEXPIRE', key, ttl)
  i = i + 2 + 2 * n
end
"""


class RedisRuns:
    """Every replica's runs, each a Redis hash (`<prefix>run:<run id>`); the holder renews
    the lease of its runs every `lease / 3` seconds.

    The records written since the writer's last round trip go as one script call: a unary
    run (start and end) costs the loop a few list appends, not a Redis command each."""

    event_types = _RUN_EVENTS

    def __init__(self, store: Store, writer: StoreWriter, encode: Encode, *, ttl: float = 3600.0,
                 lease: float = 10.0) -> None:
        self.store = store
        self.writer = writer
        self.encode = encode
        self.lease = lease
        self.replica = replica_id()
        self._ttl_ms = max(1, round(ttl * 1000))
        self._held: set[str] = set()  # the ids of the runs in progress here
        self._renewal: asyncio.Task | None = None
        self._batch: list[RunEvent | tuple[str, ...]] = []  # run events, and lease renewals (run ids)
        self._script = store.redis.register_script(_WRITE)

    def on_event(self, event: RunEvent) -> None:
        if event.type is EventType.RUN_START:
            self._held.add(event.run.run_id)
        else:
            self._held.discard(event.run.run_id)
        self._add(event)

    def _add(self, item: RunEvent | tuple[str, ...]) -> None:
        batch = self._batch
        batch.append(item)
        if len(batch) == 1 and not self.writer.put(self._write):
            batch.clear()  # the writer's backlog is full: these writes are lost (and counted)

    async def _write(self, pipe: Any) -> None:
        batch, self._batch = self._batch, []
        key = self.store.key
        args: list[Any] = [self._ttl_ms]
        for item in batch:
            if type(item) is tuple:  # lease renewals
                until = repr(time.time() + self.lease)
                for run_id in item:
                    args += (key("run", run_id), 1, "lease", until)
                continue
            run = item.run
            if item.type is EventType.RUN_START:
                args += (key("run", run.run_id), 6, "agent", run.agent, "user", run.user_id,
                         "session", run.session_id, "created", repr(item.time), "replica", self.replica,
                         "lease", repr(item.time + self.lease))
            else:
                try:
                    end = self.encode(item)
                except Exception:
                    logger.exception("the end of run %s could not be encoded", run.run_id)
                    continue
                args += (key("run", run.run_id), 2, "end", end, "end_seq", item.seq)
        if len(args) > 1:
            await self._script(args=args, client=pipe)

    async def get(self, run_id: str) -> RunRecord | None:
        from redis.exceptions import RedisError

        try:
            fields = await self.store.redis.hgetall(self.store.key("run", run_id))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"the run store is unavailable: {exc}") from None
        if not fields:
            return None
        text = {name.decode(): value.decode() for name, value in fields.items() if name != b"end"}
        end_seq = text.get("end_seq")
        return RunRecord(run_id, text.get("agent", ""), text.get("user", ""), text.get("session", ""),
                         float(text.get("created", 0)), text.get("replica", ""), fields.get(b"end"),
                         None if end_seq is None else int(end_seq))

    def start(self) -> None:
        self._renewal = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        """Renew the lease (and TTL) of the runs held here, in one batch every `lease / 3` seconds."""
        while True:
            await asyncio.sleep(self.lease / 3)
            if self._held:
                self._add(tuple(self._held))

    async def aclose(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
            self._renewal = None
