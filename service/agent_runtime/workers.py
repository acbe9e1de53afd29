"""Worker threads for blocking agent and tool code (plain functions).

They are the runtime's own, not asyncio's default executor: a hung function then
cannot starve the loop's own thread work (DNS lookups, say), and the runtime
knows how many are still busy when it stops. A thread cannot be interrupted, so
a cancelled caller waits for its function to return; the Runner abandons the
run (freeing its slot) if that takes longer than `cancel_grace`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class WorkerThreads:
    def __init__(self, max_workers: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="agent-runtime-worker")
        self.busy = 0  # functions running or waiting for a thread; changed in the loop's thread only

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in a worker thread, with the caller's contextvars."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future = loop.run_in_executor(self._executor, functools.partial(context.run, fn, *args, **kwargs))
        self.busy += 1
        future.add_done_callback(self._done)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait((future,))
            if not future.cancelled():
                future.exception()  # the caller is cancelled: what the function did is moot
            raise

    def _done(self, future: asyncio.Future) -> None:
        self.busy -= 1

    def shutdown(self) -> None:
        """Take no more work; threads still busy are left to finish (they cannot be stopped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
