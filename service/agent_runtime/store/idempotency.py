"""Idempotency keys: the first run started with a key (per user_id) claims it for `ttl`
seconds; a repeat within that time, on any replica, learns the first run's id and
attaches to it instead of starting a second run.

`MemoryClaims` keeps the claims of this replica (at most `max_keys`, oldest
forgotten first) when no store is configured; `RedisClaims` keeps them in the
store, claimed with one `SET NX GET`, so two replicas given the same key at the
same moment start exactly one run.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from ..errors import StoreUnavailable
from .connection import Store

# KEYS[1] the claim; ARGV[1] its holder: released only by the holder.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Claims(Protocol):
    async def claim(self, user_id: str, key: str, holder: str) -> str | None:
        """None when `holder` (a run's id, agent and session id: `holder()`) now holds `key`;
        else the holder that does."""
        ...

    async def release(self, user_id: str, key: str, holder: str) -> None:
        """Give `key` up if `holder` holds it (its run never started)."""
        ...


def holder(run_id: str, agent: str, session_id: str) -> str:
    """What a claim holds: the first run's ids, so a repeat can answer without its record."""
    return "\x1f".join((run_id, agent, session_id))


def held_by(claim: str) -> tuple[str, str, str]:
    """The (run id, agent, session id) of a claim's `holder`."""
    run_id, agent, session_id = claim.split("\x1f", 2)
    return run_id, agent, session_id


class MemoryClaims:
    def __init__(self, ttl: float = 3600.0, max_keys: int = 100_000) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self._claims: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    async def claim(self, user_id: str, key: str, holder: str) -> str | None:
        now = time.monotonic()
        claims = self._claims
        held = claims.get((user_id, key))
        if held is not None and held[1] > now:
            return held[0]
        claims[(user_id, key)] = (holder, now + self.ttl)
        claims.move_to_end((user_id, key))
        while len(claims) > self.max_keys:
            claims.popitem(last=False)
        return None

    async def release(self, user_id: str, key: str, holder: str) -> None:
        held = self._claims.get((user_id, key))
        if held is not None and held[0] == holder:
            del self._claims[(user_id, key)]


class RedisClaims:
    def __init__(self, store: Store, ttl: float = 3600.0) -> None:
        self.store = store
        self._ttl_ms = max(1, round(ttl * 1000))
        self._release = store.redis.register_script(_RELEASE)

    def _key(self, user_id: str, key: str) -> str:
        return self.store.key("idempotency", "\x1f".join((user_id, key)))

    async def claim(self, user_id: str, key: str, holder: str) -> str | None:
        from redis.exceptions import RedisError

        try:
            held = await self.store.redis.set(self._key(user_id, key), holder, nx=True, px=self._ttl_ms, get=True)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"the run store is unavailable: {exc}") from None
        return None if held is None else held.decode()

    async def release(self, user_id: str, key: str, holder: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._release(keys=[self._key(user_id, key)], args=[holder])
        except (RedisError, OSError):
            pass  # the claim expires with its TTL
