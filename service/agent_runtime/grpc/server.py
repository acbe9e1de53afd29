"""RuntimeServer: the gRPC server assembled around a SessionManager.

It serves the AgentRuntime service, Redpanda's agent runtime protocol
(redpanda.py), the standard health service (overall and per service) and
reflection; `serve()` runs until SIGTERM/SIGINT and then drains: health NOT_SERVING, new runs UNAVAILABLE, runs in progress get
`drain_timeout` seconds, the rest are cancelled (each still ends with its end
event). A second signal stops at once. TLS, mutual TLS and bearer-token auth are
assembled here when configured (`tls.py`, `auth.py`); nothing is installed for
them when they are off.

Observability is assembled here too: Prometheus metrics into a registry (handed
in, or made when `metrics_port` is set, and then served on `/metrics`), spans
from a TracerProvider (handed in, or made from the OTEL_* environment), and a
log line per run. Every RPC of every service is observed in its handler
(instrument.py).

With `plugin_handshake` it is a go-plugin plugin as Redpanda Connect launches
it: it binds 127.0.0.1 on a free port (and serves no /metrics), prints `1|1|tcp|127.0.0.1:PORT|grpc` as
its first stdout line, reports health service `plugin` SERVING and drains when
the host calls `plugin.GRPCController/Shutdown`.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any, Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection_pb2_grpc

from .. import tracing
from ..config import ConfigError, ServerConfig
from ..errors import AgentRuntimeError
from ..events import EventSink
from ..history import InMemoryHistory
from ..metrics import GrpcMetrics, MetricsEndpoint, MetricsSink
from ..runlog import RunLogSink, configure as configure_logging
from ..session import SessionManager
from ..store.connection import Store
from ..store.idempotency import Claims, MemoryClaims, RedisClaims
from ..store.runs import MemoryRuns, RedisRuns, RunRegistry
from ..store.streams import RedisEvents
from ..store.writer import StoreWriter
from . import auth, messages, redpanda, reflection, tls
from .instrument import ObservedRegistrar, RpcObserver
from .servicer import SERVICE_NAME, AgentRuntimeServicer, method_handlers, unread_handlers

logger = logging.getLogger("agent_runtime.server")

PLUGIN_HEALTH_SERVICE = "plugin"
PLUGIN_CONTROLLER_SERVICE = "plugin.GRPCController"

SERVING = health_pb2.HealthCheckResponse.SERVING
# Seconds calls get to send their last messages once every run has ended or been cancelled.
FINAL_GRACE = 1.0


class RuntimeServer:
    """Serves one or more agents over gRPC: `RuntimeServer(agent)` or `RuntimeServer([a, b], config=...)`."""

    def __init__(self, agents: Any = None, config: ServerConfig | None = None, *,
                 manager: SessionManager | None = None, sinks: Iterable[EventSink] = (),
                 registry: Any = None, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        """`registry` (a prometheus_client CollectorRegistry), `tracer_provider` and
        `meter_provider` (OpenTelemetry's) come from an embedding application; without
        them a registry is made when `metrics_port` is set, and a tracer provider when
        the OTEL_* environment asks for trace export. With a `meter_provider` the
        metrics are reported through it too."""
        self.config = config if config is not None else ServerConfig.load()
        if self.config.plugin_handshake:  # a host may launch several: nothing on fixed ports
            self.config = self.config.replace(host="127.0.0.1", port=0, metrics_port=0)
        cfg = self.config
        self.store = Store.from_config(cfg)
        if manager is None:
            if agents is None:
                from ..echo import echo_agent

                agents = echo_agent
            manager = SessionManager(
                agents, max_concurrency=cfg.max_concurrency, max_queue=cfg.max_queue,
                queue_timeout=cfg.queue_timeout, per_user_limit=cfg.per_user_limit,
                default_timeout=cfg.run_timeout or None, cancel_grace=cfg.cancel_grace,
                history=self._history())
        self.manager = manager
        for sink in sinks:
            manager.add_sink(sink)
        self.writer = StoreWriter(self.store) if self.store is not None else None
        self.runs: RunRegistry = (
            MemoryRuns(messages.encoded_event) if self.store is None else
            RedisRuns(self.store, self.writer, messages.encoded_event, ttl=cfg.store_run_ttl, lease=cfg.store_lease))
        manager.add_sink(self.runs)
        self.events: RedisEvents | None = None
        self.claims: Claims = MemoryClaims(cfg.idempotency_ttl)
        if self.store is not None:
            self.events = RedisEvents(self.store, self.writer, messages.encoded_event, ttl=cfg.store_run_ttl)
            manager.add_sink(self.events)
            self.claims = RedisClaims(self.store, cfg.idempotency_ttl)
        self.observers: list[RpcObserver] = []
        if registry is None and (cfg.metrics_port or meter_provider is not None):
            from prometheus_client import CollectorRegistry, ProcessCollector

            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry = registry
        if registry is not None:
            mirror = None
            if meter_provider is not None:
                from ..otel_metrics import OtelMirror

                mirror = OtelMirror(meter_provider)
            manager.add_sink(MetricsSink(registry, manager, mirror))
            self.observers.append(GrpcMetrics(registry, mirror))
        self._own_tracer_provider = tracer_provider is None
        self.tracer_provider = tracer_provider if tracer_provider is not None else tracing.provider_from_env()
        if self.tracer_provider is not None:
            tracer = self.tracer_provider.get_tracer(tracing.INSTRUMENTATION)
            manager.add_sink(tracing.TracingSink(tracer))
            self.observers.append(tracing.RpcTracer(tracer))
        self.run_log = RunLogSink()
        manager.add_sink(self.run_log)
        self.metrics: MetricsEndpoint | None = None
        self.a2a_card: Any = None  # A2A's agent card and tasks, once started with A2A on
        self.a2a_tasks: Any = None
        self.health = health_aio.HealthServicer()
        self.services: list[str] = [SERVICE_NAME]
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self._shutdown_task: asyncio.Task | None = None

    def _history(self) -> Any:
        """Conversations in the store when there is one, else in memory."""
        cfg = self.config
        if self.store is None:
            return InMemoryHistory(cfg.history_max_sessions, cfg.history_max_messages)
        from ..store.history import RedisHistory

        return RedisHistory(self.store, cfg.history_max_messages, cfg.store_history_ttl)

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not started")
        return f"{self.config.host}:{self.port}"

    def grpc_options(self) -> list[tuple[str, Any]]:
        """Channel arguments of the server: message limits, connection age (so clients
        behind a ClusterIP Service reconnect and spread over pods) and keepalive."""
        cfg = self.config
        size = cfg.max_message_bytes
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_timeout_ms", _ms(cfg.keepalive_timeout)),
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(cfg.keepalive_permit_interval)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if cfg.max_connection_age:
            options.append(("grpc.max_connection_age_ms", _ms(cfg.max_connection_age)))
            if cfg.max_connection_age_grace:
                options.append(("grpc.max_connection_age_grace_ms", _ms(cfg.max_connection_age_grace)))
        options.append(("grpc.keepalive_time_ms", _ms(cfg.keepalive_time) if cfg.keepalive_time else _NEVER_MS))
        if cfg.max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", cfg.max_concurrent_streams))
        return options

    async def start(self) -> str:
        """Bind and start serving; returns the address (`host:port`)."""
        if self._server is not None:
            raise RuntimeError("the server has already started")
        cfg = self.config
        if self.store is not None:
            await self.store.check()
            logger.info("sharing run state in the store at %s", self.store.where)
            self.writer.start()
        self.runs.start()
        credentials = tls.server_credentials(cfg)
        operator = auth.operator_token(cfg)
        server = grpc.aio.server(options=self.grpc_options(), interceptors=auth.interceptors(cfg, operator))
        registrar = ObservedRegistrar(server, self.observers)
        servicer = AgentRuntimeServicer(self.manager, operator, cfg.max_message_bytes, self.runs, self.events,
                                        self.claims)
        registrar.add_registered_method_handlers(SERVICE_NAME, method_handlers(servicer))
        if len(self.manager.agents) == 1:
            registrar.add_gates(SERVICE_NAME, self.manager.admission, unread_handlers(servicer))
        redpanda_servicer = self._redpanda_servicer()
        if redpanda_servicer is not None:
            for service, service_handlers in redpanda.method_handlers(redpanda_servicer).items():
                registrar.add_registered_method_handlers(service, service_handlers)
                self.services.append(service)
            for service, stand_ins in redpanda.unread_handlers(redpanda_servicer).items():
                registrar.add_gates(service, self.manager.admission, stand_ins)
        a2a_servicer = self._a2a_servicer()
        if a2a_servicer is not None:
            from . import a2a

            registrar.add_registered_method_handlers(a2a.SERVICE_NAME, a2a.method_handlers(a2a_servicer))
            self.services.append(a2a.SERVICE_NAME)
        if cfg.plugin_handshake:
            registrar.add_registered_method_handlers(
                PLUGIN_CONTROLLER_SERVICE, {"Shutdown": grpc.unary_unary_rpc_method_handler(self._plugin_shutdown)})
            self.services.append(PLUGIN_HEALTH_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        served = [*(s for s in self.services if s != PLUGIN_HEALTH_SERVICE),
                  health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        if cfg.reflection:
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.servicer(served), registrar)
        host = cfg.host if ":" not in cfg.host or cfg.host.startswith("[") else f"[{cfg.host}]"
        _refuse_a_taken_port(host, cfg.port)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(f"{host}:{cfg.port}")
            else:
                self.port = server.add_secure_port(f"{host}:{cfg.port}", credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {host}:{cfg.port}: {exc}") from None
        documents = {}
        if a2a_servicer is not None:
            from .a2a_card import WELL_KNOWN_PATH, agent_card, card_json, interface_url

            a2a_servicer.card = self.a2a_card = agent_card(self.manager.agents, interface_url(cfg, self.port),
                                                           token_auth=bool(cfg.auth_token or cfg.auth_token_file))
            documents[WELL_KNOWN_PATH] = ("application/json", card_json(self.a2a_card))
        if self.registry is not None and cfg.metrics_port:
            self.metrics = MetricsEndpoint(self.registry, cfg.host, cfg.metrics_port, documents)
            try:
                self.metrics.start()
            except OSError:
                await server.stop(grace=0)
                raise
        await server.start()
        self._server = server
        self._stopped = asyncio.Event()
        for service in ("", *self.services):
            await self.health.set(service, SERVING)
        logger.info("serving agents %s on %s", ", ".join(self.manager.agents), self.address)
        return self.address

    def _redpanda_servicer(self) -> redpanda.RedpandaRuntimeServicer | None:
        """Redpanda's InvokeAgent, when it is clear which agent it runs."""
        cfg = self.config
        if not cfg.redpanda_agent and len(self.manager.agents) > 1:
            if cfg.plugin_handshake:
                raise ConfigError("several agents are served: name the one Redpanda's InvokeAgent runs "
                                  "with redpanda_agent")
            logger.info("several agents are served and redpanda_agent is not set: the Redpanda "
                        "protocol is not served")
            return None
        try:
            return redpanda.RedpandaRuntimeServicer(self.manager, cfg.redpanda_agent,
                                                    tracer_provider=self.tracer_provider)
        except AgentRuntimeError as exc:
            raise ConfigError(f"redpanda_agent: {exc.message}") from None

    def _a2a_servicer(self) -> Any:
        """A2A's servicer (its card is made once the port is bound), unless switched off or
        the a2a-sdk (the agent-runtime[a2a] extra) is not installed."""
        if not self.config.a2a:
            return None
        try:
            from .a2a import A2AServicer
            from .a2a_tasks import RecentTasks
        except ImportError as exc:
            logger.info("A2A is not served: %s (install agent-runtime[a2a])", exc)
            return None
        self.a2a_tasks = RecentTasks(self.config.a2a_max_tasks)
        return A2AServicer(self.manager, None, self.a2a_tasks)

    async def _plugin_shutdown(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """go-plugin's graceful stop (`plugin.GRPCController/Shutdown`): drain, as on SIGTERM."""
        logger.info("the plugin host asked to shut down: draining")
        asyncio.get_running_loop().call_soon(asyncio.ensure_future, self.stop())
        return b""

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Drain, then stop; idempotent, and concurrent callers share one shutdown."""
        if self._server is None:
            return
        if self._shutdown_task is None:
            timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, drain_timeout: float) -> None:
        self.manager.admission.draining = True  # new runs are refused from this instant on
        try:
            await self.health.enter_graceful_shutdown()
            cancelled = await self.manager.drain(drain_timeout)
            logger.info("drained; %d runs were cancelled at the drain deadline", cancelled)
        finally:
            await self._server.stop(grace=FINAL_GRACE)
            self._close_observability()
            await self.manager.aclose()
            await self._close_store()
            self._stopped.set()

    async def abort(self) -> None:
        """Stop at once: cancel every call in progress."""
        if self._server is not None:
            self.manager.admission.draining = True
            await self._server.stop(grace=0)
            self._close_observability()
            await self.manager.aclose()
            await self._close_store()
            self._stopped.set()

    async def _close_store(self) -> None:
        """Stop renewing leases, send the writes still queued, close the connections; once."""
        await self.runs.aclose()
        if self.store is not None:
            store, self.store = self.store, None
            await self.writer.aclose()
            await store.aclose()

    def _close_observability(self) -> None:
        """Stop serving /metrics and flush spans of a provider this server made; idempotent."""
        if self.metrics is not None:
            self.metrics.stop()
        if self._own_tracer_provider and self.tracer_provider is not None:
            provider, self.tracer_provider = self.tracer_provider, None
            provider.shutdown()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve(self, announce: Callable[[str], None] | None = None) -> int:
        """Start, announce the address, serve until SIGTERM/SIGINT, then drain and stop.

        Returns the process exit code: 0 after a drain, 128 + the signal number
        when a second signal cut the drain short."""
        address = await self.start()
        _freeze_startup_heap()
        loop = asyncio.get_running_loop()
        signals: list[int] = []
        stopping: list[asyncio.Future] = []

        def on_signal(signum: int) -> None:
            signals.append(signum)
            if len(signals) == 1:
                logger.info("%s received: draining for up to %gs (send again to stop at once)",
                            signal.Signals(signum).name, self.config.drain_timeout)
                stopping.append(asyncio.ensure_future(self.stop()))
            elif len(signals) == 2:
                logger.warning("second signal (%s): stopping at once", signal.Signals(signum).name)
                stopping.append(asyncio.ensure_future(self.abort()))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        # announced once signals drain: a supervisor may signal as soon as it reads the address
        (announce or (_announce_plugin if self.config.plugin_handshake else _announce))(address)
        try:
            await self.wait_stopped()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self.abort()
            gc.unfreeze()
        return 128 + signals[1] if len(signals) > 1 else 0


def _refuse_a_taken_port(host: str, port: int) -> None:
    """Say in one line that `port` is taken, before gRPC core tries it: core's failed bind
    logs a raw `E... add_port.cc` line of its own first. The probe binds as core does
    (SO_REUSEADDR, so only a listener counts); anything else that stops a bind (an address
    not on this machine, a privileged port) is left to gRPC's own error."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot listen on {host}:{port}: port {port} is taken by another process; "
                                  "stop it, or pick another port (--port or AGENT_RUNTIME_PORT; 0 picks a free "
                                  "one)") from None


_NEVER_MS = 2**31 - 1  # gRPC's "infinite" for millisecond channel arguments


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _freeze_startup_heap() -> None:
    """Move what start-up built (modules, protobuf descriptors, the server itself) out
    of the garbage collector's sight, as preforking servers do: the older generations'
    collections then walk what calls make, not the whole heap (docs/design.md has the
    figure). Cyclic garbage of start-up is collected first, so nothing is kept that
    would have been freed."""
    gc.collect()
    gc.freeze()


def _announce(address: str) -> None:
    print(f"agent-runtime listening on {address}", file=sys.stdout, flush=True)


def _announce_plugin(address: str) -> None:
    """go-plugin's handshake line: core protocol 1, app protocol 1, network, address, gRPC."""
    print(f"1|1|tcp|{address}|grpc", file=sys.stdout, flush=True)


async def serve_main(server: RuntimeServer) -> int:
    """Serve `server` until SIGTERM/SIGINT (the seeds' entry point); returns the exit code.

    This is a process's main: agents still executing once the server has stopped
    (abandoned ones that ignore cancellation, or runs cut short by a second
    signal) cannot be waited for, so the process exits without them. It sets up
    logging as `agent-runtime serve` does (the config's level and format, on
    stderr) unless the application did."""
    if configure_logging(server.config.log_level, server.config.log_format):
        # the run log decides which run ends it logs as it is made: made again for this level
        manager = server.manager
        manager.sinks.remove(server.run_log)
        server.run_log = RunLogSink()
        manager.add_sink(server.run_log)
    code = await server.serve()
    busy = server.manager.busy
    if busy:
        logger.error("exiting with %d runs, abandoned agents or worker threads still executing "
                     "(they ignored cancellation)", busy)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
