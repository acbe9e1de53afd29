"""agent-runtime: serve Python agents over gRPC, with admission control,
per-run events, Prometheus metrics and OpenTelemetry spans."""

from .agent import Agent, AgentSpec, as_agent
from .builder import AgentBuilder
from .config import ConfigError, ServerConfig
from .context import RunContext, current_run, emit_chunk, emit_event
from .errors import (AgentError, AgentNotFound, AgentRuntimeError, Draining, InputRequired, InvalidInput,
                     MaxTurnsExceeded, Overloaded, ProviderRejected, ProviderUnavailable, RunCancelled,
                     RunTimeout, ServerMisconfigured, Unauthenticated)
from .events import EventSink, EventType, RunEvent, RunStatus
from .history import HistoryStore, InMemoryHistory
from .hooks import AgentHooks
from .mcp_tools import MCPServer
from .grpc.server import RuntimeServer, serve_main
from .payload import Blob
from .runner import Runner
from .session import Session, SessionManager
from .tools import Tool, tool

__all__ = [
    "Agent", "AgentBuilder", "AgentError", "AgentHooks", "AgentNotFound", "AgentRuntimeError", "AgentSpec",
    "Blob", "ConfigError", "Draining", "EventSink", "EventType", "HistoryStore", "InMemoryHistory",
    "InputRequired", "InvalidInput", "MCPServer", "MaxTurnsExceeded", "Overloaded",
    "ProviderRejected", "ProviderUnavailable", "RunCancelled", "RunContext", "RunEvent", "RunStatus",
    "RunTimeout", "Runner", "RuntimeServer", "ServerConfig", "ServerMisconfigured", "Session", "SessionManager",
    "Tool", "Unauthenticated", "as_agent", "current_run", "emit_chunk", "emit_event", "serve_main", "tool",
]
