"""Tools: plain Python functions an agent (or its model) can call.

`@tool` derives the JSON schema of the arguments from type hints and the
docstring, validates arguments with pydantic, runs sync functions in a worker
thread and async ones in the loop, and reports tool start/end events to the
current run.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .context import current_run
from .events import EventType, RunStatus

_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


class ToolArgumentsError(ValueError):
    """The arguments do not match the tool's schema; the message says how."""


class ToolCall:
    """The outcome of one tool call as `tool_events` reports it."""

    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result: Any = None


@contextlib.contextmanager
def tool_events(name: str, call_id: str, arguments: Any) -> Iterator[ToolCall]:
    """Report tool.start, then tool.end with the status of the block's outcome,
    to the current run (nothing outside a run)."""
    run = current_run()
    runner = run.runner if run is not None else None
    if runner is not None:
        runner.emit(EventType.TOOL_START, {"tool": name, "call_id": call_id, "arguments": arguments})
    started = time.perf_counter()
    call = ToolCall()
    status, error = RunStatus.ERROR, ""
    try:
        yield call
        status = RunStatus.OK
    except asyncio.CancelledError:
        status, error = RunStatus.CANCELLED, "cancelled"
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if runner is not None:
            runner.emit(EventType.TOOL_END, {
                "tool": name, "call_id": call_id, "status": status, "result": call.result,
                "error": error, "duration": time.perf_counter() - started})


@dataclass(frozen=True)
class Tool:
    """A callable a model can ask for: its name, description and JSON schema.

    `_model` (a pydantic model) validates arguments; a tool without one (an MCP
    server's, whose server validates) takes any JSON object.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] = field(repr=False)
    _model: Any = field(default=None, repr=False, compare=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly, with no validation or events."""
        return self.fn(*args, **kwargs)

    def validate(self, arguments: dict[str, Any] | str | None) -> dict[str, Any]:
        """Parse and validate arguments (a dict or a JSON object text)."""
        import pydantic

        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                raise ToolArgumentsError(f"arguments of tool {self.name!r} are not valid JSON: {exc}") from None
        if not isinstance(arguments, dict):
            raise ToolArgumentsError(f"arguments of tool {self.name!r} must be a JSON object")
        if self._model is None:
            return arguments
        try:
            model = self._model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            raise ToolArgumentsError(f"invalid arguments for tool {self.name!r}: {exc}") from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def invoke(self, arguments: dict[str, Any] | str | None = None, *, call_id: str = "") -> Any:
        """Validate, run and report one call of this tool within the current run."""
        with tool_events(self.name, call_id, arguments) as call:
            kwargs = self.validate(arguments)
            if inspect.iscoroutinefunction(self.fn):
                call.result = await self.fn(**kwargs)
            else:
                run = current_run()
                if run is not None and run.runner is not None:  # the runtime's threads (workers.py)
                    call.result = await run.runner.manager.threads.call(self.fn, **kwargs)
                else:
                    call.result = await asyncio.to_thread(self.fn, **kwargs)
        return call.result


def _doc_parts(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """Summary and per-argument descriptions from a Google- or Sphinx-style docstring."""
    doc = inspect.getdoc(fn) or ""
    summary, args, in_args = [], {}, False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if stripped.startswith(":param "):
            name, _, text = stripped[len(":param "):].partition(":")
            args[name.split()[-1]] = text.strip()
            continue
        if in_args:
            match = _ARG_LINE.match(line)
            if match:
                args[match.group(1)] = match.group(2).strip()
                continue
            if stripped.endswith(":") or not stripped:
                in_args = False
            continue
        if stripped.lower().startswith(("returns:", "raises:")):
            break
        summary.append(stripped)
    return " ".join(s for s in summary if s).strip(), args


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None) -> Any:
    """Make a function a Tool: `@tool` or `@tool(name=..., description=...)`."""

    def wrap(fn: Callable[..., Any]) -> Tool:
        import pydantic

        summary, arg_docs = _doc_parts(fn)
        hints = inspect.get_annotations(fn, eval_str=True)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {fn.__name__!r}: *args/**kwargs cannot be described to a model")
            annotation = hints.get(param.name, Any)
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, pydantic.Field(default, description=arg_docs.get(param.name)))
        tool_name = name or fn.__name__
        model = pydantic.create_model(f"{tool_name}_arguments", **fields)
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return Tool(tool_name, description or summary, schema, fn, model)

    return wrap(fn) if fn is not None else wrap
