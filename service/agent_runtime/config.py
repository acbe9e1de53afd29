"""Server configuration: one frozen dataclass; each field is also a CLI flag and an
`AGENT_RUNTIME_*` environment variable.

Precedence, lowest first: defaults, the config file's `server:` section, the
environment, the command line.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

ENV_PREFIX = "AGENT_RUNTIME_"


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


def _opt(default: Any, help: str, *, flag: str | None = None, minimum: float | None = None,
         metavar: str | None = None, secret: bool = False) -> Any:
    """A setting; a `secret` one is kept out of repr and has no CLI flag (it would show in `ps`)."""
    meta = {"help": help, "flag": flag, "minimum": minimum, "metavar": metavar, "secret": secret}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True)
class ServerConfig:
    host: str = _opt("127.0.0.1", "address to listen on (0.0.0.0 or [::] for all interfaces)")
    port: int = _opt(50051, "gRPC port; 0 picks a free port", minimum=0)
    agents: tuple[str, ...] = _opt((), "agent to serve as module:attribute (repeatable); "
                                   "the embedded echo agent when none is given", flag="--agent")
    config_file: str = _opt("", "YAML or TOML file with agents and server settings", flag="--config")
    app_dir: str = _opt(".", "folder whose modules agents are imported from first (as uvicorn's "
                        "--app-dir): `--agent myagents:hello` finds ./myagents.py")
    max_concurrency: int = _opt(8, "runs executing at once; 0 = unlimited", minimum=0)
    max_queue: int = _opt(100, "runs waiting for a slot before RESOURCE_EXHAUSTED", minimum=0)
    queue_timeout: float = _opt(30.0, "seconds a run may wait for a slot", minimum=0.001)
    per_user_limit: int = _opt(0, "runs one user_id may have running or queued; 0 = no cap", minimum=0)
    run_timeout: float = _opt(0.0, "default time limit of a run in seconds; 0 = none", minimum=0)
    drain_timeout: float = _opt(25.0, "seconds in-flight runs get to finish after SIGTERM", minimum=0)
    cancel_grace: float = _opt(5.0, "seconds a cancelled agent gets before it is abandoned", minimum=0)
    max_message_bytes: int = _opt(4 * 1024 * 1024, "largest request or response message", minimum=1024)
    max_connection_age: float = _opt(300.0, "seconds after which a client connection is asked to go away "
                                     "(GOAWAY), so clients reconnect and spread over new pods; 0 = never",
                                     minimum=0)
    max_connection_age_grace: float = _opt(0.0, "seconds calls in progress on an aged connection may still "
                                           "take before it is closed; 0 = as long as they need", minimum=0)
    keepalive_time: float = _opt(60.0, "seconds of idleness after which the server pings a client to find "
                                 "dead connections; 0 = never", minimum=0)
    keepalive_timeout: float = _opt(20.0, "seconds a keepalive ping may wait for its answer before the "
                                    "connection is closed", minimum=0.001)
    keepalive_permit_interval: float = _opt(10.0, "shortest interval at which clients may send keepalive "
                                            "pings (also without calls) before the server calls it abuse",
                                            minimum=0)
    max_concurrent_streams: int = _opt(1000, "calls one client connection may have open at once (HTTP/2 "
                                       "SETTINGS_MAX_CONCURRENT_STREAMS; calls over it are refused with "
                                       "UNAVAILABLE); 0 = no limit, which lets one connection hold "
                                       "unbounded memory", minimum=0)
    reflection: bool = _opt(True, "serve gRPC server reflection (for grpcurl); switch off in production "
                            "if the API should not be discoverable")
    tls_cert: str = _opt("", "PEM certificate chain file: serve TLS (re-read when the file changes)")
    tls_key: str = _opt("", "PEM private key file of tls_cert (re-read when the file changes)")
    tls_client_ca: str = _opt("", "PEM CA bundle file: require client certificates it signed (mutual TLS)")
    auth_token_file: str = _opt("", "file holding the bearer token callers must send as `authorization: "
                                "Bearer <token>` (re-read when the file changes)")
    auth_token: str = _opt("", "the bearer token itself (no flag: set it in the environment)", secret=True)
    auth_operator_token_file: str = _opt("", "file holding the operator's bearer token: it authenticates as "
                                         "auth_token does and may also cancel other users' runs (re-read "
                                         "when the file changes)")
    auth_operator_token: str = _opt("", "the operator's bearer token itself (no flag: set it in the environment)",
                                    secret=True)
    auth_exempt: tuple[str, ...] = _opt(("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"),
                                        "gRPC services callable without a token (repeatable)",
                                        metavar="SERVICE")
    redpanda_agent: str = _opt("", "agent that Redpanda's InvokeAgent runs; may be empty when one agent "
                               "is served (with several and none named, the Redpanda protocol is not served)")
    plugin_handshake: bool = _opt(False, "run as a Redpanda Connect (go-plugin) plugin: bind 127.0.0.1 on a "
                                  "free port, print the go-plugin handshake as the first stdout line, "
                                  "serve no /metrics")
    log_level: str = _opt("info", "debug, info, warning or error")
    log_format: str = _opt("text", "log lines as text or json (one object a line)")
    metrics_port: int = _opt(9464, "port of the Prometheus /metrics endpoint; 0 disables it", minimum=0)
    a2a: bool = _opt(True, "serve A2A's gRPC binding (lf.a2a.v1.A2AService) for every agent, and its agent card "
                     "at /.well-known/agent-card.json on the metrics port (needs the agent-runtime[a2a] extra)")
    a2a_url: str = _opt("", "host:port A2A clients reach the gRPC port at, as the agent card gives it (the "
                        "Kubernetes Service's address); default this host and the bound port")
    a2a_max_tasks: int = _opt(1000, "A2A tasks kept for GetTask and ListTasks after their runs end (least "
                              "recently updated dropped first)", minimum=1)
    history_max_sessions: int = _opt(10_000, "conversations kept in memory (least recently used "
                                     "dropped first)", minimum=1)
    history_max_messages: int = _opt(100, "messages kept per conversation (oldest whole turns "
                                     "dropped first)", minimum=1)
    store_url: str = _opt("", "redis:// or rediss:// (TLS) URL of a Redis or Valkey that replicas share "
                          "run state in (conversations, runs, events); empty = all in process")
    store_password_file: str = _opt("", "file holding the store's password (a mounted Secret), instead "
                                    "of one in store_url")
    store_prefix: str = _opt("agent-runtime:", "prefix of every key in the store, so several deployments "
                             "can share one Redis")
    store_history_ttl: float = _opt(86400.0, "seconds a conversation in the store is kept after its last "
                                    "use (history_max_messages bounds it there too)", minimum=1)
    store_run_ttl: float = _opt(3600.0, "seconds a run's record and events are kept in the store after "
                                "its last event", minimum=1)
    idempotency_ttl: float = _opt(3600.0, "seconds a request's idempotency_key attaches repeats to its "
                                  "first run (in the store when there is one, else in this replica)",
                                  minimum=1)
    store_lease: float = _opt(10.0, "seconds a run's lease lasts; the replica holding the run renews it "
                              "every third of that", minimum=0.1)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            minimum = f.metadata.get("minimum")
            if minimum is not None and getattr(self, f.name) < minimum:
                raise ConfigError(f"{f.name} must be >= {minimum:g}, got {getattr(self, f.name)!r}")
        for name in ("port", "metrics_port"):
            if getattr(self, name) > 65535:
                raise ConfigError(f"{name} must be <= 65535, got {getattr(self, name)}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key must be set together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.auth_token and self.auth_token_file:
            raise ConfigError(f"set either auth_token_file or {env_name('auth_token')}, not both")
        if self.auth_operator_token and self.auth_operator_token_file:
            raise ConfigError(f"set either auth_operator_token_file or {env_name('auth_operator_token')}, not both")
        if (self.auth_operator_token or self.auth_operator_token_file) and not (self.auth_token or self.auth_token_file):
            raise ConfigError("an operator token needs auth on: set auth_token_file or "
                              f"{env_name('auth_token')} too")
        if self.store_url and not self.store_url.startswith(("redis://", "rediss://")):
            raise ConfigError("store_url must be a redis:// or rediss:// (TLS) URL")
        if self.store_password_file and not self.store_url:
            raise ConfigError("store_password_file needs store_url")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None,
             file_settings: Mapping[str, Any] | None = None) -> "ServerConfig":
        """Defaults < file settings < environment < `overrides` (from the command line)."""
        values: dict[str, Any] = {}
        for source, settings in (("config file", file_settings or {}),
                                 ("environment", from_environ(os.environ if environ is None else environ)),
                                 ("command line", overrides or {})):
            for name, value in settings.items():
                values[name] = coerce(name, value, source)
        return cls(**values)

    def replace(self, **changes: Any) -> "ServerConfig":
        return dataclasses.replace(self, **changes)


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(ServerConfig)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def from_environ(environ: Mapping[str, str]) -> dict[str, str]:
    return {f.name: environ[env_name(f.name)] for f in fields() if env_name(f.name) in environ}


def _type_of(name: str) -> Any:
    hints = typing.get_type_hints(ServerConfig)
    if name not in hints:
        raise ConfigError(f"unknown setting {name!r}; known: {', '.join(f.name for f in fields())}")
    return hints[name]


def coerce(name: str, value: Any, source: str = "") -> Any:
    """`value` (a string from env/CLI, or a value from a file) as the field's type."""
    kind = _type_of(name)
    where = f" (from {source})" if source else ""
    try:
        if typing.get_origin(kind) is tuple:
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError("expected a list of strings")
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected a whole number")
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError("expected a number")
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}{where}: {value!r} is not valid: {exc}") from None


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def is_repeatable(f: dataclasses.Field) -> bool:
    return isinstance(f.type, types.GenericAlias) or "tuple" in str(f.type)
