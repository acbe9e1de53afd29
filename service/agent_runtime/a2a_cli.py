"""`agent-runtime a2a`: send one message to any A2A agent over gRPC and print its answer.

It is the a2a-sdk's own client (its ClientFactory and gRPC transport), so what
works here works from any A2A caller. The agent card comes from `--card URL`
(the agent's base URL: its /.well-known/agent-card.json), or else from the
agent's `GetExtendedAgentCard` at `--target`, which then is the address called
(a card names the address its Service has in its cluster, not a port-forward's).
Exit codes are `invoke`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

import grpc

from .client import ClientConfig

TERMINAL_FAILURES = ("TASK_STATE_FAILED", "TASK_STATE_CANCELED", "TASK_STATE_REJECTED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="TEXT|@FILE", help="the message: text; @file.json sends the file's JSON "
                        "as a data part, @file any other file (text, or a raw part when not UTF-8), @- stdin")
    parser.add_argument("--json", action="store_true", help="parse TEXT (or @FILE) as JSON: a data part")
    parser.add_argument("--card", metavar="URL", help="the agent's base URL: its card is read from "
                        "URL/.well-known/agent-card.json and names the address to call (instead of --target)")
    parser.add_argument("--agent", default="", help="the request's tenant: which agent of a server of several")
    parser.add_argument("--stream", action="store_true", help="print the answer as the agent produces it")
    parser.add_argument("--task", default="", help="the task to continue (one waiting for input)")
    parser.add_argument("--context", default="", help="context id (messages of one context share history)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print task id, context id and state on stderr")


def run(args: argparse.Namespace, config: ClientConfig) -> int:
    """Send the message; returns the exit status. The SDK's errors are reported here, with
    the exit status of the gRPC code under them (usage errors go back to client_cli)."""
    from .client_cli import EXIT_CODES, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, read_input

    try:
        from a2a.client.errors import A2AClientError, AgentCardResolutionError
        from a2a.utils.errors import A2AError
    except ImportError:
        print("agent-runtime a2a: error: the a2a-sdk is not installed: pip install 'agent-runtime[a2a]'",
              file=sys.stderr)
        return EXIT_USAGE

    message = _message(read_input(args.input, args.json), args)
    try:
        return asyncio.run(_send(args, config, message))
    except AgentCardResolutionError as exc:
        print(f"agent-runtime: cannot read the agent card: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (A2AError, A2AClientError) as exc:
        cause = exc.__cause__
        if isinstance(cause, grpc.aio.AioRpcError):
            code, said = cause.code(), f"{cause.code().name}: {cause.details()}"
        else:
            code, said = None, getattr(exc, "message", None) or str(exc)
        print(f"agent-runtime: {said}", file=sys.stderr)
        return EXIT_CODES.get(code, EXIT_FAILED)


def _message(value: Any, args: argparse.Namespace) -> Any:
    from a2a.types import a2a_pb2 as a2a

    from .grpc.a2a_parts import output_part

    return a2a.SendMessageRequest(tenant=args.agent, message=a2a.Message(
        message_id=uuid.uuid4().hex, role=a2a.Role.ROLE_USER, parts=[output_part(value)],
        task_id=args.task, context_id=args.context))


def _channel_factory(config: ClientConfig) -> Any:
    options = config.channel_options()

    def channel(url: str) -> grpc.aio.Channel:
        return (grpc.aio.secure_channel(url, config.credentials(), options=options) if config.secure
                else grpc.aio.insecure_channel(url, options=options))

    return channel


async def _card(factory_config: Any, context: Any, target: str) -> Any:
    """The agent's card from its GetExtendedAgentCard, to be called at `target`; a minimal
    card (no streaming) from an agent that does not give one."""
    from a2a.client import ClientFactory, minimal_agent_card
    from a2a.types import a2a_pb2 as a2a
    from a2a.utils.errors import A2AError

    card = minimal_agent_card(target, ["GRPC"])
    client = ClientFactory(factory_config).create(card)
    try:
        card = await client.get_extended_agent_card(a2a.GetExtendedAgentCardRequest(), context=context)
    except A2AError:
        return minimal_agent_card(target, ["GRPC"])
    finally:
        await client.close()
    for interface in card.supported_interfaces:
        interface.url = target
    return card


async def _send(args: argparse.Namespace, config: ClientConfig, request: Any) -> int:
    from a2a.client import ClientCallContext, ClientFactory
    from a2a.client import ClientConfig as A2AClientConfig

    factory_config = A2AClientConfig(streaming=args.stream, supported_protocol_bindings=["GRPC"],
                                     grpc_channel_factory=_channel_factory(config))
    context = ClientCallContext(timeout=args.timeout,
                                service_parameters=dict(config.call_metadata()) or None)
    factory = ClientFactory(factory_config)
    if args.card:
        client = await factory.create_from_url(args.card)
    else:
        client = factory.create(await _card(factory_config, context, config.target))
    try:
        return await _print_answer(client.send_message(request, context=context), args)
    finally:
        await client.close()


async def _print_answer(responses: Any, args: argparse.Namespace) -> int:
    """Print the answer's parts (streamed ones as they come) and end with the task's state."""
    from a2a.types import a2a_pb2 as a2a

    task, streamed, line_open = None, False, False
    async for response in responses:
        kind = response.WhichOneof("payload")
        if kind == "artifact_update":
            streamed = True
            for part in response.artifact_update.artifact.parts:
                line_open = _print_part(part, live=True)
        elif kind == "task":
            task = response.task
        elif kind == "status_update" and task is not None:
            task.status.CopyFrom(response.status_update.status)
        elif kind == "message":
            for part in response.message.parts:
                _print_part(part)
            return 0
    if line_open:
        print(flush=True)
    if task is None:
        raise RuntimeError("the agent answered without a task or a message")
    if not streamed:
        for artifact in task.artifacts:
            for part in artifact.parts:
                line_open = _print_part(part, live=True)
        if line_open:
            print(flush=True)
    state = a2a.TaskState.Name(task.status.state)
    said = "".join(part.text for part in task.status.message.parts)
    if args.verbose:
        print(json.dumps({"task": task.id, "context": task.context_id, "state": state}), file=sys.stderr)
    if state == "TASK_STATE_INPUT_REQUIRED":
        print(f"the agent asks: {said}\nanswer with: --task {task.id} --context {task.context_id}", file=sys.stderr)
    elif state in TERMINAL_FAILURES:
        print(f"agent-runtime: task {task.id} {state.removeprefix('TASK_STATE_').lower()}: {said}", file=sys.stderr)
        return 1
    return 0


def _print_part(part: Any, live: bool = False) -> bool:
    """Print one part; True when a line of text was left open."""
    from google.protobuf import json_format

    kind = part.WhichOneof("content")
    if kind == "text":
        sys.stdout.write(part.text if live else part.text + "\n")
        sys.stdout.flush()
        return live and not part.text.endswith("\n")
    if kind == "raw":
        sys.stdout.buffer.write(part.raw)
        sys.stdout.buffer.flush()
        return False
    value = json_format.MessageToDict(part.data) if kind == "data" else part.url
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)
    return False
