"""Admission control: slots, a bounded FIFO queue, a queue-wait limit, a per-user cap.

A slot is held by a run from its start to its end. When slots are full a run
waits in the queue (FIFO, slot handed over directly on release, so no late
arrival can overtake a waiter); when the queue is full, the wait is too long or
the user holds too many runs, admission refuses at once with `Overloaded`.
Occupancy and refusals are kept as plain counters that metrics read at scrape time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from .errors import Draining, Overloaded


class Admission:
    def __init__(self, limit: int = 0, *, max_queue: int = 0, queue_timeout: float = 30.0,
                 per_user_limit: int = 0) -> None:
        if limit < 0 or max_queue < 0 or per_user_limit < 0 or queue_timeout <= 0:
            raise ValueError("limits must be >= 0 and queue_timeout > 0")
        self.limit = limit
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.per_user_limit = per_user_limit
        self.in_use = 0
        self.running: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self._draining = False
        self._waiters: deque[asyncio.Future] = deque()
        self._per_user: dict[str, int] = {}
        self._hold_ewma = 0.1
        self._full: tuple[tuple[int, int] | None, str] = (None, "")
        # `refuses_every_run()`, kept up to date as it changes, so a server can ask it of
        # every call it takes by reading an attribute rather than calling a method. Its
        # users must let it decide a cost, never an outcome: the stand-ins it chooses
        # check `refusal()` again before they refuse.
        self.closed = False

    @property
    def draining(self) -> bool:
        """Whether every run is refused (`Draining`): the server is shutting down."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        self._recheck()

    def _recheck(self) -> None:
        self.closed = self.refuses_every_run()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, user_id: str = "", label: str = "") -> float:
        """Take a slot for a run of agent `label`; returns the seconds spent queued.

        A refusal (`Overloaded`, `Draining`) is counted in `rejected[label]`."""
        return 0.0 if self.take(user_id, label) else await self.queue(user_id, label)

    def refusal(self, user_id: str = "", label: str = "") -> Overloaded | Draining | None:
        """The error a run would be refused with now (`Overloaded`, `Draining`; counted in
        `rejected[label]`), or None. Returned, not raised: callers shedding load before
        they build anything for a run pay for no exception of their own."""
        if self.refuses_every_run():
            self._refused(label)  # refused here: no coroutine for a refusal
            if self._draining:
                return Draining("server is draining; retry on another replica")
            return Overloaded(self._full_message(), retry_after=self._retry_after())
        if self.per_user_limit and user_id:
            held = self._per_user.get(user_id, 0)
            if held >= self.per_user_limit:
                self._refused(label)
                return Overloaded(f"user {user_id!r} already has {held} runs "
                                  f"(per-user limit {self.per_user_limit})", retry_after=self._retry_after())
        return None

    def refuses_every_run(self) -> bool:
        """Whether any run, whoever asks, would be refused now: draining, or every slot and
        the queue taken. A server can then refuse a call before it reads the request."""
        return self._draining or (self.in_use >= self.limit > 0 and len(self._waiters) >= self.max_queue)

    def _full_message(self) -> str:
        """Why a run is refused when slots and queue are full (made once per limits)."""
        limits = (self.limit, self.max_queue)
        if self._full[0] != limits:
            self._full = (limits, f"over capacity: every slot (max_concurrency {self.limit}) is taken "
                                  f"and the queue is full (max_queue {self.max_queue})")
        return self._full[1]

    def check(self, user_id: str = "", label: str = "") -> bool:
        """Whether a run would get a slot at once (True) or wait in the queue (False);
        a run that would be refused raises its `refusal`."""
        refused = self.refusal(user_id, label)
        if refused is not None:
            raise refused
        return not self.limit or (self.in_use < self.limit and not self._waiters)

    def take(self, user_id: str = "", label: str = "") -> bool:
        """Take a free slot at once (True), or say the run must `queue` for one (False);
        refusals as `check`'s. The common case costs no coroutine: callers await `queue`
        only on False; a free slot with no per-user cap and no drain, not even a call."""
        if self._draining or self.per_user_limit or (self.limit and (self.in_use >= self.limit or self._waiters)):
            free = self.check(user_id, label)
            if self.per_user_limit and user_id:
                self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
            if not free:
                return False
        self.in_use += 1
        if self.in_use == self.limit:  # the last slot: with no queue, every run is refused now
            self._recheck()
        running = self.running
        running[label] = running.get(label, 0) + 1
        return True

    async def queue(self, user_id: str = "", label: str = "") -> float:
        """Wait in the queue for a slot after `take` said False; returns the seconds waited."""
        try:
            waited = await self._wait(label)
        except BaseException as exc:
            self._forget_user(user_id)
            if isinstance(exc, (Overloaded, Draining)):
                self._refused(label)
            raise
        self.running[label] = self.running.get(label, 0) + 1
        return waited

    def _refused(self, label: str) -> None:
        self.rejected[label] = self.rejected.get(label, 0) + 1

    async def _wait(self, label: str) -> float:
        slot = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        self._recheck()
        self.queued[label] = self.queued.get(label, 0) + 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.queue_timeout):
                await slot
        except TimeoutError:
            if not self._got(slot):
                raise Overloaded(f"no slot free within the queue wait limit of "
                                 f"{self.queue_timeout:g}s", retry_after=self._retry_after()) from None
        except BaseException:
            if self._got(slot):
                self._release_slot()
            raise
        finally:
            self.queued[label] -= 1
            if self.closed:
                self._recheck()
        return time.perf_counter() - started

    def _got(self, slot: asyncio.Future) -> bool:
        """Whether `slot` was handed over; if not, take it out of the queue."""
        if slot.done() and not slot.cancelled() and slot.exception() is None:
            return True
        try:
            self._waiters.remove(slot)
        except ValueError:
            pass
        return False

    def refuse_waiting(self) -> None:
        """Fail every queued run with `Draining` (the drain deadline has passed)."""
        waiters, self._waiters = self._waiters, deque()
        for slot in waiters:
            if not slot.done():
                slot.set_exception(Draining("server shut down before a slot became free"))
        self._recheck()

    def release(self, user_id: str = "", label: str = "", held_for: float = 0.0) -> None:
        """Give back a slot taken by `acquire`; `held_for` feeds the retry hint."""
        if self.per_user_limit and user_id:
            self._forget_user(user_id)
        self.running[label] -= 1
        self._hold_ewma += 0.05 * (held_for - self._hold_ewma)
        if self._waiters:
            self._release_slot()
        else:
            self.in_use -= 1
        if self.closed:
            self._recheck()

    def _release_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            slot = waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.in_use -= 1

    def _forget_user(self, user_id: str) -> None:
        if self.per_user_limit and user_id:
            left = self._per_user[user_id] - 1
            if left:
                self._per_user[user_id] = left
            else:
                del self._per_user[user_id]

    def _retry_after(self) -> float:
        """Seconds a refused caller should wait: about one run's slot time per queue round."""
        rounds = 1 + len(self._waiters) / max(self.limit, 1)
        return min(max(self._hold_ewma * rounds, 0.05), 30.0)
