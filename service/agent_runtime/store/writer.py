"""Writes to the store from one task, in pipelined batches.

Event sinks run in a run's own task and must not wait: they hand the writer a
command (a coroutine function that adds commands to a pipeline) and go on. The writer
sends everything handed in since its last round trip as one pipeline, so a
stream of chunks costs a round trip per batch, not per chunk. A slow or absent
store costs runs nothing: at most `max_pending` commands wait, newer ones are
dropped and counted, and the failure is logged once until writes succeed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Awaitable, Callable

from .connection import Store

logger = logging.getLogger("agent_runtime.store")

Command = Callable[[Any], Awaitable[None]]  # adds commands to a redis pipeline

# Commands sent in one pipeline at most: a backlog is sent in several round trips.
BATCH = 1024


class StoreWriter:
    def __init__(self, store: Store, max_pending: int = 100_000) -> None:
        self.store = store
        self.max_pending = max_pending
        self.dropped = 0  # commands refused while max_pending were waiting
        self.failed = 0  # commands in batches the store did not take
        self._pending: deque[Command] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._failing = False

    def put(self, command: Command) -> bool:
        """Queue `command` for the next batch; never waits. False when it was dropped."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return False
        self._pending.append(command)
        wake = self._wake
        if wake is not None:
            wake.set()
        return True

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send every queued command."""
        from redis.exceptions import RedisError

        pending = self._pending
        while pending:
            batch = [pending.popleft() for _ in range(min(BATCH, len(pending)))]
            try:
                async with self.store.redis.pipeline(transaction=False) as pipe:
                    for command in batch:
                        try:
                            await command(pipe)
                        except Exception:
                            logger.exception("a store write could not be prepared; it is dropped")
                    results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                self.failed += len(batch)
                if not self._failing:
                    self._failing = True
                    logger.warning("writes to the store at %s fail (%s); runs go on, their state "
                                   "is not shared until it is back", self.store.where, exc)
                continue
            if self._failing:
                self._failing = False
                logger.info("writes to the store at %s succeed again", self.store.where)
            for result in results:
                if isinstance(result, Exception):
                    logger.warning("the store refused a write: %s", result)

    async def aclose(self, timeout: float = 2.0) -> None:
        """Stop, after sending what is queued (for at most `timeout` seconds)."""
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout)
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            logger.warning("%d store writes were not sent at shutdown", len(self._pending))
