"""Agents from configuration: `module:attr` references and config files.

A config file (YAML or TOML) looks like:

    server:                 # any ServerConfig setting, optional
      max_concurrency: 16
    agents:
      - ref: mypkg.agents:support          # an agent object to import
      - name: helper                       # or a model-backed Agent described here
        model: openai/gpt-4o-mini
        instructions: Answer briefly.
        tools: [mypkg.tools:lookup]
        base_url: http://vllm:8000/v1        # else <PROVIDER>_BASE_URL, else the provider's
        api_key_env: HELPER_API_KEY          # else <PROVIDER>_API_KEY
        request_timeout: 30                  # seconds per model request
        max_retries: 2                       # on 429/5xx/connection errors, with backoff
        output_type: mypkg.models:Answer     # structured output
        hooks: mypkg.hooks:audit             # an AgentHooks instance
        mcp_servers:
          - http://tools:8000/mcp                          # streamable HTTP
          - {command: python, args: [-m, mypkg.mcp]}       # stdio

`AgentBuilder` is the `shared_builder` of `SessionManager(config=..., shared_builder=...)`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

from .config import ConfigError

AGENT_KEYS = {"name", "model", "instructions", "tools", "description", "model_settings",
              "max_turns", "timeout", "base_url", "api_key_env", "request_timeout", "max_retries",
              "output_type", "hooks", "mcp_servers"}
_REF_KEYS = ("output_type", "hooks")


def load_object(ref: str, *, looked_in: str = "") -> Any:
    """Import `module:attr` (attr may be dotted); ConfigError says what is wrong, and
    where the module was looked for when `looked_in` says so."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{ref!r} is not a module:attribute reference (e.g. mypkg.agents:support)")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (looked in {looked_in})" if looked_in and isinstance(exc, ModuleNotFoundError) else ""
        raise ConfigError(f"cannot import module {module_name!r} (from {ref!r}): {exc}{where}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} (from {ref!r})") from None
    return obj


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    as_toml = path.suffix == ".toml"
    try:
        if as_toml:
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid {'TOML' if as_toml else 'YAML'} (config "
                          f"files are read as YAML, or as TOML when named *.toml): {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping with `agents` and `server`")
    unknown = set(data) - {"agents", "server"}
    if unknown:
        raise ConfigError(f"config file {str(path)!r}: unknown sections {sorted(unknown)}")
    return data


class AgentBuilder:
    """Builds the agents a configuration describes."""

    def build(self, config: Mapping[str, Any]) -> list[Any]:
        entries = config.get("agents")
        if not isinstance(entries, list) or not entries:
            raise ConfigError("config needs a non-empty `agents` list")
        return [self.build_agent(entry, i) for i, entry in enumerate(entries)]

    def build_agent(self, entry: Any, index: int = 0) -> Any:
        if isinstance(entry, str):
            return load_object(entry)
        if not isinstance(entry, Mapping):
            raise ConfigError(f"agents[{index}] must be a module:attr string or a mapping")
        if "ref" in entry:
            extra = set(entry) - {"ref", "name"}
            if extra:
                raise ConfigError(f"agents[{index}]: `ref` takes only `name` beside it, not {sorted(extra)}")
            obj = load_object(entry["ref"])
            if "name" in entry:
                from .agent import as_agent

                obj = as_agent(obj, entry["name"])
            return obj
        unknown = set(entry) - AGENT_KEYS
        if unknown or "name" not in entry:
            raise ConfigError(f"agents[{index}]: needs `ref`, or `name` with Agent settings "
                              f"({', '.join(sorted(AGENT_KEYS))}); unknown keys {sorted(unknown)}")
        from .agent import Agent

        settings = dict(entry)
        settings["tools"] = [load_object(t) if isinstance(t, str) else t for t in settings.get("tools", ())]
        for key in _REF_KEYS:
            if isinstance(settings.get(key), str):
                settings[key] = load_object(settings[key])
        try:
            settings["mcp_servers"] = [_mcp_server(s) for s in settings.get("mcp_servers", ())]
            return Agent(**settings)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"agents[{index}] ({entry.get('name')!r}): {exc}") from None


def _mcp_server(entry: Any) -> Any:
    """An MCP server entry: a URL, or a mapping of `MCPServer` settings."""
    from .mcp_tools import MCPServer

    if isinstance(entry, str):
        return MCPServer(url=entry)
    if isinstance(entry, Mapping):
        return MCPServer(**entry)
    raise ValueError(f"an mcp_servers entry must be a URL or a mapping, not {entry!r}")
