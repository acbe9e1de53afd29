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


class RedisRuns:
    """Every replica's runs, each a Redis hash (`<prefix>run:<run id>`); the holder renews
    the lease of its runs every `lease / 3` seconds."""

    event_types = _RUN_EVENTS

    def __init__(self, store: Store, writer: StoreWriter, encode: Encode, *, ttl: float = 3600.0,
                 lease: float = 10.0) -> None:
        self.store = store
        self.writer = writer
        self.encode = encode
        self.lease = lease
        self.replica = replica_id()
        self._ttl_ms = max(1, round(ttl * 1000))
        self._held: dict[str, str] = {}  # run id -> key, of the runs in progress here
        self._renewal: asyncio.Task | None = None

    def on_event(self, event: RunEvent) -> None:
        run = event.run
        key = self.store.key("run", run.run_id)
        ttl = self._ttl_ms
        if event.type is EventType.RUN_START:
            self._held[run.run_id] = key
            fields = {"agent": run.agent, "user": run.user_id, "session": run.session_id,
                      "created": repr(event.time), "replica": self.replica,
                      "lease": repr(event.time + self.lease)}
        else:
            self._held.pop(run.run_id, None)
            fields = None
            encode = self.encode

        def command(pipe: Any) -> None:
            pipe.hset(key, mapping=fields if fields is not None else {"end": encode(event), "end_seq": event.seq})
            pipe.pexpire(key, ttl)

        self.writer.put(command)

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
        ttl = self._ttl_ms
        while True:
            await asyncio.sleep(self.lease / 3)
            keys = list(self._held.values())
            if keys:
                until = repr(time.time() + self.lease)

                def command(pipe: Any, keys: list[str] = keys, until: str = until) -> None:
                    for key in keys:
                        pipe.hset(key, "lease", until)
                        pipe.pexpire(key, ttl)

                self.writer.put(command)

    async def aclose(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
            self._renewal = None
