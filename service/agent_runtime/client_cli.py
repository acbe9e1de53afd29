"""`agent-runtime invoke | agents | health | a2a`: the Python client from a shell
(`a2a`, any A2A agent over gRPC, is in a2a_cli.py).

Exit codes: 0 ok; 1 the call or the run failed (status name and message on
stderr); 2 usage (bad flags, unreadable input file, invalid JSON); 3 the server
is unreachable, unavailable or over capacity (try again later); 4 credentials
missing or refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from . import a2a_cli
from .client import CallError, ClientConfig, SyncAgentRuntimeClient
from .payload import Blob

PROG = "agent-runtime"
COMMANDS = ("invoke", "agents", "health", "a2a")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_UNAUTHENTICATED = 0, 1, 2, 3, 4
EXIT_CODES = {
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_UNAUTHENTICATED,
}
EPILOG = ("exit status: 0 ok, 1 the call or run failed, 2 usage, 3 server unreachable, unavailable or "
          "over capacity, 4 credentials missing or refused")
# (flag, ClientConfig field, environment variable, help)
CONNECTION_FLAGS = (
    ("--target", "target", "AGENT_RUNTIME_TARGET",
     "server address: host:port, dns:///name:port, ipv4:ip:port,ip:port (default 127.0.0.1:50051)"),
    ("--token", "token", "AGENT_RUNTIME_AUTH_TOKEN", "bearer token sent as `authorization: Bearer ...`"),
    ("--ca", "ca_cert", "AGENT_RUNTIME_CA_CERT", "PEM file of the CA that signed the server's certificate (TLS)"),
    ("--cert", "client_cert", "AGENT_RUNTIME_CLIENT_CERT", "PEM client certificate for mutual TLS"),
    ("--key", "client_key", "AGENT_RUNTIME_CLIENT_KEY", "PEM private key of --cert"),
    ("--server-name", "server_name", "AGENT_RUNTIME_SERVER_NAME", "name to verify the server's certificate against"),
)


class UsageError(Exception):
    """Bad flags or input: exit status 2."""


def add_commands(commands: Any) -> None:
    """Add `invoke`, `agents` and `health` to the `agent-runtime` subcommands."""
    invoke = commands.add_parser("invoke", help="run an agent on a server and print its output",
                                 epilog=EPILOG, description="Run an agent on a server and print its output "
                                 "(streamed chunks live with --stream).")
    invoke.add_argument("input", metavar="TEXT|@FILE", help="input text; @file.json sends the file's JSON "
                        "as structured input, @file any other file (text, or bytes when not UTF-8), @- stdin")
    invoke.add_argument("--json", action="store_true", help="parse TEXT (or @FILE) as JSON: structured input")
    invoke.add_argument("--agent", default="", help="agent to run (optional when the server serves one)")
    invoke.add_argument("--stream", action="store_true", help="print output chunks as the agent produces them")
    invoke.add_argument("--session", default="", help="session id (runs of one session share history)")
    invoke.add_argument("--user", default="", help="user id (per-user limits apply to it)")
    invoke.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="metadata handed to the agent (repeatable)")
    invoke.add_argument("--verbose", "-v", action="store_true", help="print run id, usage and events on stderr")
    agents = commands.add_parser("agents", help="list the agents a server serves", epilog=EPILOG)
    agents.add_argument("--json", action="store_true", help="print JSON instead of a table")
    health = commands.add_parser("health", help="check a server's health (exit 0 when SERVING)", epilog=EPILOG)
    health.add_argument("--service", default="", help="service to check (default: the whole server)")
    a2a = commands.add_parser("a2a", help="send a message to any A2A agent over gRPC and print its answer",
                              epilog=EPILOG, description="Send a message to an A2A agent (lf.a2a.v1.A2AService, "
                              "this server's or any other) with the a2a-sdk client; needs agent-runtime[a2a].")
    a2a_cli.add_arguments(a2a)
    for parser, timeout in ((invoke, None), (agents, 10.0), (health, 5.0), (a2a, None)):
        _add_connection_flags(parser)
        parser.add_argument("--max-attempts", type=int, choices=range(1, 6), default=ClientConfig.max_attempts,
                            metavar="N",
                            help="attempts of a call the server refused before running anything (over "
                                 "capacity, draining), 1-5; a run that started is never retried "
                                 f"(default {ClientConfig.max_attempts})")
        parser.add_argument("--timeout", type=float, default=timeout, metavar="S",
                            help="deadline of the call in seconds" + (f" (default {timeout:g})" if timeout else ""))


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    for flag, dest, env, help_text in CONNECTION_FLAGS:
        parser.add_argument(flag, dest=dest, default=os.environ.get(env) or None, help=f"{help_text} [env {env}]")
    parser.add_argument("--tls", action="store_true", default=None,
                        help="use TLS with the system's CA certificates (implied by --ca/--cert)")


def client_config(args: argparse.Namespace) -> ClientConfig:
    settings = {dest: getattr(args, dest) for _, dest, _, _ in CONNECTION_FLAGS if getattr(args, dest)}
    settings["tls"] = bool(args.tls)
    settings["max_attempts"] = args.max_attempts
    try:
        return ClientConfig(**settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Run a client command; returns the exit status."""
    try:
        config = client_config(args)
        if args.command == "a2a":
            return a2a_cli.run(args, config)
        command = {"invoke": _invoke, "agents": _agents, "health": _health}[args.command]
        with SyncAgentRuntimeClient(config=config) as client:
            return command(client, args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CallError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CODES.get(exc.code, EXIT_FAILED)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def read_input(text: str, as_json: bool) -> Any:
    """The invoke input: text, or a file's content after @, parsed as JSON when asked or named *.json."""
    if text.startswith("@"):
        path = text[1:]
        try:
            data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read input file {path!r}: {exc.strerror}") from None
        as_json = as_json or path.endswith(".json")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if as_json:
                raise UsageError(f"input file {path!r} is not UTF-8 JSON") from None
            return data
    if not as_json:
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"input is not valid JSON: {exc}") from None


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata takes KEY=VALUE, not {pair!r}")
        metadata[key] = value
    return metadata


def _print_output(output: Any) -> None:
    if isinstance(output, Blob):
        sys.stdout.buffer.write(output.data)
        sys.stdout.buffer.flush()
    elif isinstance(output, str):
        print(output, flush=True)
    else:
        print(json.dumps(output, indent=2, ensure_ascii=False), flush=True)


def _invoke(client: SyncAgentRuntimeClient, args: argparse.Namespace) -> int:
    """Run the agent; a server of several agents asked without --agent says to use it
    (its own message names the request's `agent` field, which a shell user never sees)."""
    try:
        return _run_agent(client, args)
    except CallError as exc:
        if exc.code is not grpc.StatusCode.INVALID_ARGUMENT or args.agent:
            raise
        names = [agent.name for agent in client.list_agents(timeout=10)]
        if len(names) < 2:
            raise
        raise CallError(exc.code, f"this server serves several agents ({', '.join(names)}); "
                                  "name one with --agent") from None


def _run_agent(client: SyncAgentRuntimeClient, args: argparse.Namespace) -> int:
    input = read_input(args.input, args.json)
    options = dict(agent=args.agent, session_id=args.session, user_id=args.user,
                   metadata=_metadata(args.metadata), timeout=args.timeout)
    if not args.stream:
        result = client.invoke(input, **options)
        _print_output(result.output)
        if args.verbose:
            print(f"run {result.run_id} agent {result.agent} session {result.session_id} tokens "
                  f"{result.input_tokens} in, {result.output_tokens} out", file=sys.stderr)
        return EXIT_OK
    streamed, line_open = False, False
    for event in client.stream(input, **options):
        if event.kind == "chunk":
            streamed = True
            chunk = event.chunk
            if isinstance(chunk, str):
                sys.stdout.write(chunk)
                line_open = not chunk.endswith("\n")
            else:
                sys.stdout.write(("\n" if line_open else "") + json.dumps(chunk, ensure_ascii=False) + "\n")
                line_open = False
            sys.stdout.flush()
        elif args.verbose:
            print(json.dumps({"event": event.kind, "run_id": event.run_id, "seq": event.seq,
                              **{k: v for k, v in event.data.items() if k != "output"}}, default=str),
                  file=sys.stderr, flush=True)
        if event.kind == "ended":
            if line_open:
                print(flush=True)
            if not streamed and event.data["status"] == "ok":
                _print_output(event.data.get("output"))
    return EXIT_OK


def _agents(client: SyncAgentRuntimeClient, args: argparse.Namespace) -> int:
    agents = client.list_agents(timeout=args.timeout)
    if args.json:
        print(json.dumps([asdict(agent) for agent in agents], indent=2))
        return EXIT_OK
    for agent in agents:
        tools = ", ".join(tool["name"] for tool in agent.tools) or "-"
        print(f"{agent.name}\tmodel={agent.model or '-'}\tstreaming={'yes' if agent.streaming else 'no'}"
              f"\ttools={tools}\t{agent.description.splitlines()[0] if agent.description else ''}")
    return EXIT_OK


def _health(client: SyncAgentRuntimeClient, args: argparse.Namespace) -> int:
    status = client.health(args.service, timeout=args.timeout)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_FAILED
