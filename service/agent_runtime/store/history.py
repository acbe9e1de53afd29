"""Conversations in Redis: a `HistoryStore` with the in-memory one's semantics (whole
turns, at most `max_messages` messages, oldest turns dropped first) that replicas
share, and a TTL instead of the in-memory store's LRU bound.

A conversation is a Redis list, one message an element (its JSON after a flag byte,
`u` for a user message, which starts a turn). Appending a turn and trimming the list
is one Lua script, so turns that two replicas append at once never interleave and
none is lost; reading it (or appending) renews its idle TTL.
"""

from __future__ import annotations

import json
from typing import Sequence

from ..history import Message
from .connection import Store

# KEYS[1] the conversation; ARGV[1] max messages, ARGV[2] idle TTL (ms), ARGV[3...] the turn.
_APPEND = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('RPUSH', key, ARGV[i])
end
local n = redis.call('LLEN', key)
if n > limit then
  local items = redis.call('LRANGE', key, 0, -1)
  local drop = 0
  while n - drop > limit do
    local turn = nil
    for i = drop + 2, n do
      if string.byte(items[i], 1) == 117 then
        turn = i
        break
      end
    end
    if turn == nil then
      break
    end
    drop = turn - 1
  end
  if drop > 0 then
    redis.call('LTRIM', key, drop, -1)
  end
end
redis.call('PEXPIRE', key, ARGV[2])
return n
"""


class RedisHistory:
    """Conversations of every replica, each at most `max_messages` messages (or its last
    turn when that alone is longer), forgotten `ttl` seconds after last use."""

    def __init__(self, store: Store, max_messages: int = 100, ttl: float = 86400.0) -> None:
        if max_messages < 1 or ttl <= 0:
            raise ValueError("max_messages must be >= 1 and ttl > 0")
        self.store = store
        self.max_messages = max_messages
        self._ttl_ms = max(1, round(ttl * 1000))
        self._append = store.redis.register_script(_APPEND)

    def _key(self, key: str) -> str:
        return self.store.key("history", key)

    async def load(self, key: str) -> list[Message]:
        name = self._key(key)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(name, 0, -1)
            pipe.pexpire(name, self._ttl_ms)
            items, _ = await pipe.execute()
        return [json.loads(item[1:]) for item in items]

    async def append(self, key: str, messages: Sequence[Message]) -> None:
        encoded = [("u" if message.get("role") == "user" else "-")
                   + json.dumps(message, separators=(",", ":"), ensure_ascii=False) for message in messages]
        if encoded:
            await self._append(keys=[self._key(key)], args=[self.max_messages, self._ttl_ms, *encoded])
