"""Agents: what the runtime runs.

Anything with `async run(input)` is an agent, and so is an async function; an
async generator (function or `run` method) is a streaming agent whose chunks
stream to the caller; a plain function runs in a worker thread. `as_agent`
turns each of these into one `AgentSpec` that the Runner calls the same way.
`Agent` is the model-backed agent of the seeds.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .tools import Tool


class CallKind(enum.Enum):
    COROUTINE = "coroutine"
    STREAM = "stream"
    THREAD = "thread"


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """How the Runner calls one served agent, and how ListAgents describes it."""

    name: str
    call: Callable[[Any], Any]
    kind: CallKind
    description: str = ""
    model: str = ""
    streaming: bool = False
    tools: tuple[Tool, ...] = ()
    timeout: float | None = None
    target: Any = None


@dataclass(eq=False)
class Agent:
    """A model-backed agent: instructions, a model and tools, run in a tool loop.

    `model` is `provider/model` (see `llm.py` for endpoints and keys);
    `output_type` (a pydantic model, dataclass, TypedDict...) makes the answer
    structured data; `mcp_servers` add the tools of those MCP servers.
    """

    name: str
    model: str = "openai/gpt-4o-mini"
    instructions: str = ""
    tools: Sequence[Any] = ()
    description: str = ""
    hooks: Any = None
    model_settings: Mapping[str, Any] = field(default_factory=dict)
    output_type: Any = None
    max_turns: int = 10
    timeout: float | None = None
    mcp_servers: Sequence[Any] = ()
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    request_timeout: float = 60.0
    max_retries: int = 2
    streaming = True

    def __post_init__(self) -> None:
        from .llm import ChatModel

        self.tools = tuple(t if isinstance(t, Tool) else _as_tool(t) for t in self.tools)
        self.mcp_servers = tuple(self.mcp_servers)
        if self.max_turns < 1:
            raise ValueError(f"agent {self.name!r}: max_turns must be >= 1")
        self.chat_model = ChatModel(
            self.model, base_url=self.base_url, api_key=self.api_key, api_key_env=self.api_key_env,
            timeout=self.request_timeout, max_retries=self.max_retries, settings=self.model_settings)
        self._output = None
        self.response_format: dict[str, Any] | None = None
        if self.output_type is not None:
            import pydantic

            self._output = pydantic.TypeAdapter(self.output_type)
            name = getattr(self.output_type, "__name__", "output")
            self.response_format = {"type": "json_schema", "json_schema": {
                "name": "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64],
                "schema": self._output.json_schema(), "strict": False}}

    def parse_output(self, text: str) -> Any:
        """The model's final answer: its text, or the `output_type` value it holds
        (ValueError saying why not)."""
        if self._output is None:
            return text
        import pydantic

        try:
            return self._output.validate_json(text)
        except pydantic.ValidationError as exc:
            raise ValueError(str(exc)) from None

    async def run(self, input: Any) -> Any:
        """Run the tool loop on `input` and return the final answer."""
        from .llm_agent import run_agent

        return await run_agent(self, input)

    async def aclose(self) -> None:
        """Close this event loop's connections: to the model provider, to MCP servers."""
        await self.chat_model.aclose()
        for server in self.mcp_servers:
            await server.aclose()


def _as_tool(obj: Any) -> Tool:
    from .tools import tool

    if callable(obj):
        return tool(obj)
    raise TypeError(f"not a tool: {obj!r}")


def _kind(fn: Callable[..., Any]) -> CallKind:
    call = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)
    if inspect.isasyncgenfunction(call):
        return CallKind.STREAM
    if inspect.iscoroutinefunction(call):
        return CallKind.COROUTINE
    return CallKind.THREAD


def as_agent(obj: Any, name: str | None = None) -> AgentSpec:
    """Describe any agent-like object as an AgentSpec (the Runner's only view of it)."""
    if isinstance(obj, AgentSpec):
        return obj
    run = getattr(obj, "run", None)
    if callable(run):
        fn, default_name = run, type(obj).__name__
    elif callable(obj):
        fn, default_name = obj, getattr(obj, "__name__", type(obj).__name__)
    else:
        raise TypeError(f"not an agent: {obj!r} (needs `async run(input)` or to be callable)")
    kind = _kind(fn)
    agent_name = name or getattr(obj, "name", None) or default_name
    if not isinstance(agent_name, str) or not agent_name:
        raise TypeError(f"agent {obj!r} has no usable name")
    description = getattr(obj, "description", "") or (inspect.getdoc(obj) or "").split("\n\n")[0]
    if isinstance(obj, Agent):
        description = obj.description or obj.instructions
    tools = tuple(t for t in getattr(obj, "tools", ()) or () if isinstance(t, Tool))
    return AgentSpec(
        name=agent_name, call=fn, kind=kind, description=description,
        model=getattr(obj, "model", "") or "", tools=tools,
        streaming=bool(getattr(obj, "streaming", kind is CallKind.STREAM)),
        timeout=getattr(obj, "timeout", None), target=obj)


def agents_from(obj: Any) -> dict[str, AgentSpec]:
    """One agent, a sequence of agents, or a name-to-agent mapping, as specs by name."""
    if isinstance(obj, Mapping):
        specs = [as_agent(agent, name) for name, agent in obj.items()]
    elif isinstance(obj, (list, tuple)):
        specs = [as_agent(agent) for agent in obj]
    else:
        specs = [as_agent(obj)]
    if not specs:
        raise ValueError("no agents to serve")
    by_name: dict[str, AgentSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise ValueError(f"two agents are named {spec.name!r}; agent names must be unique")
        by_name[spec.name] = spec
    return by_name
