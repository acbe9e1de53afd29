"""Conversation history per session: a small store interface and a bounded
in-memory store.

Messages are chat-completions messages (dicts). A store keeps whole turns: a
turn starts with a user message, and trimming drops the oldest turns, so an
assistant's tool calls are never separated from their results. A real store
(Redis, a database) implements the two async methods of `HistoryStore`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol, Sequence

Message = dict[str, Any]


class HistoryStore(Protocol):
    async def load(self, key: str) -> list[Message]:
        """The conversation so far (oldest first); empty when unknown."""
        ...

    async def append(self, key: str, messages: Sequence[Message]) -> None:
        """Add one finished turn to the conversation."""
        ...


class InMemoryHistory:
    """At most `max_sessions` conversations (least recently used dropped first),
    each at most `max_messages` messages, or its last turn when that alone is longer."""

    def __init__(self, max_sessions: int = 10_000, max_messages: int = 100) -> None:
        if max_sessions < 1 or max_messages < 1:
            raise ValueError("max_sessions and max_messages must be >= 1")
        self.max_sessions = max_sessions
        self.max_messages = max_messages
        self._conversations: OrderedDict[str, list[Message]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._conversations)

    async def load(self, key: str) -> list[Message]:
        messages = self._conversations.get(key)
        if messages is None:
            return []
        self._conversations.move_to_end(key)
        return list(messages)

    async def append(self, key: str, messages: Sequence[Message]) -> None:
        conversation = self._conversations.setdefault(key, [])
        self._conversations.move_to_end(key)
        conversation.extend(messages)
        _trim(conversation, self.max_messages)
        while len(self._conversations) > self.max_sessions:
            self._conversations.popitem(last=False)


def _trim(conversation: list[Message], limit: int) -> None:
    """Drop the oldest whole turns while the conversation is over `limit`."""
    while len(conversation) > limit:
        next_turn = next((i for i in range(1, len(conversation)) if conversation[i].get("role") == "user"),
                         None)
        if next_turn is None:
            return
        del conversation[:next_turn]
