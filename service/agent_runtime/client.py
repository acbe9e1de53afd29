"""Python clients of the AgentRuntime gRPC API: `AgentRuntimeClient` (asyncio) and
`SyncAgentRuntimeClient` (blocking), with the same methods and results.

    async with AgentRuntimeClient("dns:///agents.team.svc.cluster.local:50051") as client:
        result = await client.invoke("Hello")            # str -> text input
        async for event in client.stream({"q": "hi"}):  # dict/list -> structured input
            ...

Channel defaults are made for service-to-service calls inside a cluster:
round_robin over every address the name resolves to (point it at a headless
Service), retries of UNAVAILABLE and RESOURCE_EXHAUSTED with exponential
backoff that honour the server's `grpc-retry-pushback-ms` hint, and keepalive
pings every minute to find dead connections. Only calls the server refused
before running anything are retried: once a run has started, every status
carries a negative pushback, which gRPC's retry policy honours as "never"
(so an agent's side effects are not repeated). TLS (server CA, client
certificate for mTLS) and a bearer token match the server's settings.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._proto.agent_runtime.v1 import runtime_pb2 as pb
from ._proto.agent_runtime.v1 import runtime_pb2_grpc as pb_grpc
from .grpc.servicer import SERVICE_NAME
from .grpc.status import RETRY_PUSHBACK_KEY, RUN_ID_KEY
from .payload import Blob, to_payload, to_python

__all__ = ["AgentInfo", "AgentRuntimeClient", "CallError", "ClientConfig", "RunResult", "StreamEvent",
           "SyncAgentRuntimeClient"]

RETRYABLE_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
_STATUS_NAMES = {pb.RUN_STATUS_OK: "ok", pb.RUN_STATUS_ERROR: "error", pb.RUN_STATUS_CANCELLED: "cancelled",
                 pb.RUN_STATUS_TIMEOUT: "timeout", pb.RUN_STATUS_UNSPECIFIED: "unspecified"}


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the server: address, TLS, token, load balancing, retries, keepalive.

    `target` is any gRPC target: `host:port`, `dns:///name:port` (a headless
    Service resolves to every pod), `ipv4:10.0.0.1:50051,10.0.0.2:50051`.
    `max_attempts` counts the first attempt (1 disables retries; gRPC caps it
    at 5); only refusals (over capacity, draining) are retried, never a run.
    `keepalive_time` (0 disables pings) must not be below the server's
    `keepalive_permit_interval` (10 s by default; a plain gRPC server's is 300 s),
    or the server closes the connection (too_many_pings).
    """

    target: str = "127.0.0.1:50051"
    tls: bool = False
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    token: str | None = None
    load_balancing: str = "round_robin"
    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    max_message_bytes: int = 4 * 1024 * 1024
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target is required (host:port or a gRPC target URI)")
        if not 1 <= self.max_attempts <= 5:
            raise ValueError("max_attempts must be 1-5 (gRPC allows at most 5 attempts)")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together (mutual TLS)")
        if self.token is not None and ("\n" in self.token or not self.token.strip()):
            raise ValueError("token must be one non-empty line")

    @property
    def secure(self) -> bool:
        return self.tls or any((self.ca_cert, self.client_cert, self.server_name))

    def service_config(self) -> dict[str, Any]:
        """The gRPC service config: load balancing and the retry policy of every method."""
        config: dict[str, Any] = {"loadBalancingConfig": [{self.load_balancing: {}}]}
        if self.max_attempts > 1:
            config["methodConfig"] = [{
                "name": [{}],  # every service and method of the channel
                "retryPolicy": {
                    "maxAttempts": self.max_attempts,
                    "initialBackoff": f"{self.initial_backoff:g}s",
                    "maxBackoff": f"{self.max_backoff:g}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": list(RETRYABLE_CODES),
                },
            }]
        return config

    def channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", json.dumps(self.service_config())),
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.enable_retries", 1 if self.max_attempts > 1 else 0),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.primary_user_agent", "agent-runtime-client"),
        ]
        if self.keepalive_time > 0:
            options += [("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
                        ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
                        ("grpc.http2.max_pings_without_data", 0)]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options + list(self.options)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(root_certificates=read(self.ca_cert),
                                            private_key=read(self.client_key),
                                            certificate_chain=read(self.client_cert))

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token.strip()}"),) if self.token else ()


class CallError(Exception):
    """A call that ended with a gRPC status other than OK.

    `code` is the grpc.StatusCode, `message` the server's safe message, `run_id`
    the failed run's id (when a run had started: it was not retried) and
    `retry_after` the server's hint in seconds (RESOURCE_EXHAUSTED).
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, run_id: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}" + (f" (run {run_id})" if run_id else ""))
        self.code = code
        self.message = message
        self.run_id = run_id
        self.retry_after = retry_after

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "CallError":
        trailers = dict(error.trailing_metadata() or ())
        pushback = trailers.get(RETRY_PUSHBACK_KEY)
        return cls(error.code(), error.details() or "", run_id=trailers.get(RUN_ID_KEY, ""),
                   retry_after=int(pushback) / 1000 if pushback and pushback.isdigit() else None)


@dataclass(frozen=True)
class RunResult:
    """The outcome of `invoke`: the agent's output as Python (str, JSON-like data or Blob)."""

    output: Any
    run_id: str
    agent: str
    session_id: str
    input_tokens: int = 0
    output_tokens: int = 0
    trace_id: str = ""


@dataclass(frozen=True)
class StreamEvent:
    """One event of a streamed run.

    `kind` is started, chunk, llm_started, llm_ended, tool_started, tool_ended,
    custom or ended. `data` holds the event's fields (snake_case); a chunk's
    is `{"chunk": value}`, and `ended` has `status` (ok, error, cancelled,
    timeout), `output` (when ok) and `error`.
    """

    kind: str
    run_id: str
    seq: int
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def chunk(self) -> Any:
        return self.data.get("chunk")


@dataclass(frozen=True)
class AgentInfo:
    name: str
    description: str = ""
    model: str = ""
    streaming: bool = False
    tools: tuple[Mapping[str, Any], ...] = ()


def invoke_request(input: Any, *, agent: str = "", session_id: str = "", user_id: str = "",
                   metadata: Mapping[str, str] | None = None, run_timeout: float | None = None
                   ) -> pb.InvokeRequest:
    """An InvokeRequest from Python values: str is text, bytes and Blob binary, the rest structured."""
    try:
        payload = to_payload(input)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"input has no wire form: {exc}") from None
    request = pb.InvokeRequest(agent=agent, session_id=session_id, user_id=user_id, input=payload,
                               metadata=dict(metadata or {}))
    if run_timeout is not None:
        request.timeout.FromNanoseconds(round(run_timeout * 1e9))
    return request


def run_result(response: pb.InvokeResponse) -> RunResult:
    return RunResult(output=to_python(response.output), run_id=response.run_id, agent=response.agent,
                     session_id=response.session_id, input_tokens=response.usage.input_tokens,
                     output_tokens=response.usage.output_tokens, trace_id=response.trace_id)


def stream_event(message: pb.InvokeEvent) -> StreamEvent:
    kind = message.WhichOneof("event") or ""
    body = getattr(message, kind) if kind else None
    if kind == "chunk":
        data: dict[str, Any] = {"chunk": to_python(body)}
    elif body is None:
        data = {}
    else:
        data = MessageToDict(body, preserving_proto_field_name=True)
        if kind in ("ended", "tool_ended"):
            data["status"] = _STATUS_NAMES.get(body.status, "unspecified")
        if kind == "ended" and body.HasField("output"):
            data["output"] = to_python(body.output)
    return StreamEvent(kind, message.run_id, message.seq, data)


def agent_infos(response: pb.ListAgentsResponse) -> list[AgentInfo]:
    return [AgentInfo(name=a.name, description=a.description, model=a.model, streaming=a.streaming,
                      tools=tuple(MessageToDict(t, preserving_proto_field_name=True) for t in a.tools))
            for a in response.agents]


def _health_status(response: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


class AgentRuntimeClient:
    """asyncio client: `async with AgentRuntimeClient(target, ...) as client`.

    Keyword arguments are `ClientConfig` fields; or pass `config=ClientConfig(...)`.
    """

    def __init__(self, target: str | None = None, *, config: ClientConfig | None = None, **settings: Any) -> None:
        if config is None:
            config = ClientConfig(**({"target": target} if target else {}), **settings)
        elif target or settings:
            raise TypeError("pass either config or target/settings, not both")
        self.config = config
        options = config.channel_options()
        self.channel = (grpc.aio.secure_channel(config.target, config.credentials(), options=options)
                        if config.secure else grpc.aio.insecure_channel(config.target, options=options))
        self._stub = pb_grpc.AgentRuntimeStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._metadata = config.call_metadata()

    async def __aenter__(self) -> "AgentRuntimeClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def invoke(self, input: Any, *, agent: str = "", session_id: str = "", user_id: str = "",
                     metadata: Mapping[str, str] | None = None, timeout: float | None = None,
                     run_timeout: float | None = None, idempotency_key: str | None = None) -> RunResult:
        """Run an agent and return its result; `timeout` is the call's deadline in seconds.

        Every call carries an idempotency key, a new random one unless `idempotency_key`
        names one (`""` sends none): a retry of the call (gRPC's, of a refusal or a broken
        connection) can then only attach to the run the call started, never start a second.
        Pass the same key again to repeat a call safely, from another client too."""
        request = invoke_request(input, agent=agent, session_id=session_id, user_id=user_id,
                                 metadata=metadata, run_timeout=run_timeout)
        request.idempotency_key = uuid.uuid4().hex if idempotency_key is None else idempotency_key
        try:
            return run_result(await self._stub.Invoke(request, timeout=timeout, metadata=self._metadata))
        except grpc.RpcError as exc:
            raise CallError.from_rpc_error(exc) from None

    async def stream(self, input: Any, *, agent: str = "", session_id: str = "", user_id: str = "",
                     metadata: Mapping[str, str] | None = None, timeout: float | None = None,
                     run_timeout: float | None = None) -> AsyncIterator[StreamEvent]:
        """Run an agent and yield its events as they come, `started` first and `ended` last;
        a run that fails raises CallError after its `ended` event."""
        request = invoke_request(input, agent=agent, session_id=session_id, user_id=user_id,
                                 metadata=metadata, run_timeout=run_timeout)
        call = self._stub.InvokeStream(request, timeout=timeout, metadata=self._metadata)
        try:
            async for message in call:
                yield stream_event(message)
        except grpc.RpcError as exc:
            raise CallError.from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def list_agents(self, *, timeout: float | None = None) -> list[AgentInfo]:
        try:
            return agent_infos(await self._stub.ListAgents(pb.ListAgentsRequest(), timeout=timeout,
                                                           metadata=self._metadata))
        except grpc.RpcError as exc:
            raise CallError.from_rpc_error(exc) from None

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's health (SERVING, NOT_SERVING, ...); `service` "" is the whole server."""
        try:
            return _health_status(await self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                                           timeout=timeout, metadata=self._metadata))
        except grpc.RpcError as exc:
            error = CallError.from_rpc_error(exc)
            if error.code is grpc.StatusCode.NOT_FOUND and not error.message:
                error = CallError(error.code, f"the server reports no health for service {service!r}")
            raise error from None


class SyncAgentRuntimeClient:
    """Blocking client with the methods of AgentRuntimeClient: `with SyncAgentRuntimeClient(target) as client`.

    It runs an AgentRuntimeClient on an event loop in a thread of its own, so
    both clients behave the same; interrupting a call (Ctrl-C) cancels it.
    """

    def __init__(self, target: str | None = None, *, config: ClientConfig | None = None, **settings: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent-runtime-client", daemon=True)
        self._thread.start()

        async def connect() -> AgentRuntimeClient:
            return AgentRuntimeClient(target, config=config, **settings)

        try:
            self._client = self._call(connect())
        except BaseException:
            self._stop_loop()
            raise
        self.config = self._client.config

    def _call(self, coro: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> "SyncAgentRuntimeClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the client's thread; idempotent."""
        if not self._loop.is_closed():
            self._call(self._client.close())
            self._call(self._loop.shutdown_asyncgens())  # streams nobody finished reading
            self._stop_loop()

    def invoke(self, input: Any, **options: Any) -> RunResult:
        """See AgentRuntimeClient.invoke."""
        return self._call(self._client.invoke(input, **options))

    def stream(self, input: Any, **options: Any) -> Iterator[StreamEvent]:
        """See AgentRuntimeClient.stream."""
        events = self._client.stream(input, **options)
        while True:
            try:
                event = self._call(events.__anext__())
            except StopAsyncIteration:
                return
            try:
                yield event
            except GeneratorExit:  # the caller stopped reading: end the call (and so the run)
                if not self._loop.is_closed():
                    self._call(events.aclose())
                raise

    def list_agents(self, **options: Any) -> list[AgentInfo]:
        return self._call(self._client.list_agents(**options))

    def health(self, service: str = "", **options: Any) -> str:
        return self._call(self._client.health(service, **options))
