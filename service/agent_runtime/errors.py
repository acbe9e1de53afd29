"""Domain errors of the runtime.

Every failure a caller can see is one of these; the gRPC layer maps each class to
a status code through one table (`agent_runtime.grpc.status`), so no other code
decides status codes.
"""

from __future__ import annotations


class AgentRuntimeError(Exception):
    """Base class: `message` is safe to show to a caller.

    Slotted, and `args` left as `BaseException.__new__` sets them (the message): a
    refusal over capacity is built for every refused call, and an instance dict and a
    `super().__init__` chain were most of what building one cost."""

    __slots__ = ("message", "run_id")

    def __init__(self, message: str, *, run_id: str = "") -> None:
        self.message = message
        self.run_id = run_id


class InvalidInput(AgentRuntimeError):
    """The request is malformed or its values are out of range."""


class AgentNotFound(AgentRuntimeError):
    """No agent of that name is served here."""


class Overloaded(AgentRuntimeError):
    """Admission refused the run: queue full, queue wait exceeded or per-user cap."""

    __slots__ = ("retry_after",)

    def __init__(self, message: str, *, retry_after: float, run_id: str = "") -> None:
        self.message = message
        self.run_id = run_id
        self.retry_after = retry_after


class Draining(AgentRuntimeError):
    """The server is shutting down and admits no new runs."""


class RunTimeout(AgentRuntimeError):
    """The run passed its deadline and was cancelled."""


class RunCancelled(AgentRuntimeError):
    """The run was cancelled by its caller or by `CancelRun`."""


class TooLarge(AgentRuntimeError):
    """A message the run would send is over the server's `max_message_bytes`."""


class StreamOverflow(AgentRuntimeError):
    """The caller of a streamed run left too many of its events unread."""


class PermissionDenied(AgentRuntimeError):
    """The caller may not act on that run: it was started by another user_id."""
class RunNotFound(AgentRuntimeError):
    """No run of that id is known (to this caller)."""


class StoreUnavailable(AgentRuntimeError):
    """The shared store (`store_url`) did not answer."""


class RunLost(AgentRuntimeError):
    """The run a call attached to never started, or was lost with its replica."""


class StoreRequired(AgentRuntimeError):
    """The call needs the replicas to share a store, and none is configured."""


class EventsExpired(AgentRuntimeError):
    """Events a watcher asked for are no longer kept (the run's stream was trimmed)."""


class Unauthenticated(AgentRuntimeError):
    """Credentials are missing or wrong."""


class AgentError(AgentRuntimeError):
    """The agent raised; the message is safe, the stack is in the log."""


class ProviderUnavailable(AgentRuntimeError):
    """The model provider is down, overloaded or unreachable."""


class ServerMisconfigured(AgentRuntimeError):
    """The server lacks a setting a run needs (a model provider's API key): only its
    operator can fix that, so the caller is told so and not invited to retry."""


class ProviderRejected(AgentRuntimeError):
    """The model provider rejected the request as invalid."""


class InputRequired(AgentRuntimeError):
    """The agent needs more from its caller before it can go on: `message` is its
    question. Over A2A the task waits in `input-required` and the caller's next message
    to the task continues the conversation; over Invoke it is FAILED_PRECONDITION."""


class MaxTurnsExceeded(AgentError):
    """The model kept asking for tools past the agent's `max_turns`."""
