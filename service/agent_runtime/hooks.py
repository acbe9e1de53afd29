"""AgentHooks: users' own logic at the steps of a model-backed agent's run.

Subclass `AgentHooks` and override what you need; each method may be async or
plain. `context` is the run's `RunContext` (None when `Agent.run` is called
outside the runtime). A hook that raises fails the run with its error, so a
hook can also refuse (raise `InvalidInput` from `on_run_start`, say).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .agent import Agent
    from .context import RunContext
    from .llm import ModelResponse
    from .tools import Tool


class AgentHooks:
    """No-op hooks; override the ones you need."""

    def on_run_start(self, context: "RunContext | None", agent: "Agent", input: Any) -> Any:
        """Before the first model call."""

    def on_run_end(self, context: "RunContext | None", agent: "Agent", output: Any,
                   error: BaseException | None) -> Any:
        """After the run: `output` on success, else `error` (cancellation included)."""

    def on_llm_start(self, context: "RunContext | None", agent: "Agent",
                     messages: Sequence[dict[str, Any]]) -> Any:
        """Before each model call, with the messages sent."""

    def on_llm_end(self, context: "RunContext | None", agent: "Agent", response: "ModelResponse") -> Any:
        """After each successful model call."""

    def on_tool_start(self, context: "RunContext | None", agent: "Agent", tool: "Tool",
                      arguments: Any) -> Any:
        """Before a tool runs, with the arguments the model gave (unvalidated)."""

    def on_tool_end(self, context: "RunContext | None", agent: "Agent", tool: "Tool", result: Any,
                    error: BaseException | None) -> Any:
        """After a tool ran: `result`, or the `error` reported to the model."""


async def call_hook(hooks: AgentHooks | None, name: str, *args: Any) -> None:
    """Call hook `name` if there are hooks; await it when it is async."""
    if hooks is None:
        return
    outcome = getattr(hooks, name)(*args)
    if inspect.isawaitable(outcome):
        await outcome
