"""The `agent-runtime` command: `serve`, and the client commands `invoke`,
`agents` and `health` (in client_cli.py).

Every `serve` flag is also an `AGENT_RUNTIME_*` environment variable (see
`config.ServerConfig`); flags win over the environment, which wins over the
config file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any, Sequence

from . import client_cli
from . import config as config_module
from .config import ConfigError, ServerConfig

PROG = "agent-runtime"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for f in config_module.fields():
        if f.metadata["secret"]:
            continue
        flag = config_module.flag_name(f)
        help_text = f"{f.metadata['help']} [env {config_module.env_name(f.name)}]"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif "tuple" in str(f.type):
            parser.add_argument(flag, dest=f.name, action="append", default=argparse.SUPPRESS,
                                metavar=f.metadata["metavar"] or "MODULE:ATTR", help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=f"{help_text} (default {f.default!r})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Serve Python agents over gRPC.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # no abbreviations: `--auth-token SECRET` must not pass as `--auth-token-file SECRET`
    serve = commands.add_parser("serve", help="serve agents over gRPC until SIGTERM/SIGINT",
                                allow_abbrev=False)
    _add_config_flags(serve)
    client_cli.add_commands(commands)
    return parser


def load_server_config(args: argparse.Namespace, environ: Any = None) -> tuple[ServerConfig, list[Any]]:
    """The effective config and the agents to serve, from flags, env and config file."""
    environ = os.environ if environ is None else environ
    overrides = {f.name: getattr(args, f.name) for f in config_module.fields() if hasattr(args, f.name)}
    path = overrides.get("config_file") or environ.get(config_module.env_name("config_file"), "")
    file_data: dict[str, Any] = {}
    if path:
        from .builder import read_config_file

        file_data = read_config_file(path)
    server_section = file_data.get("server") or {}
    if not isinstance(server_section, dict):
        raise ConfigError("the config file's `server` section must be a mapping")
    cfg = ServerConfig.load(overrides, environ=environ, file_settings=server_section)
    from .builder import AgentBuilder, load_object

    # a go-plugin host takes the first stdout line for the handshake: what agent modules
    # print when imported goes to stderr
    looked_in = f"{_import_from(cfg.app_dir)} (--app-dir) and the installed packages"
    with contextlib.redirect_stdout(sys.stderr) if cfg.plugin_handshake else contextlib.nullcontext():
        agents = [load_object(ref, looked_in=looked_in) for ref in cfg.agents]
        if file_data.get("agents"):
            agents += AgentBuilder().build(file_data)
    if not agents:
        from .echo import echo_agent

        agents = [echo_agent]
    return cfg, agents


def _import_from(app_dir: str) -> str:
    """Put `app_dir` first on the module search path, as uvicorn's --app-dir does: the
    `agent-runtime` script, unlike `python -m`, does not search the current folder."""
    folder = os.path.abspath(app_dir)
    if not os.path.isdir(folder):
        raise ConfigError(f"app_dir {app_dir!r} is not a folder")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return folder


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_serve(args: argparse.Namespace) -> int:
    from .grpc.server import RuntimeServer, serve_main

    cfg, agents = load_server_config(args)
    from .runlog import configure

    configure(cfg.log_level, cfg.log_format)
    try:
        server = RuntimeServer(agents, cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(serve_main(server))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return run_serve(args)
        if args.command in client_cli.COMMANDS:
            return client_cli.run(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
