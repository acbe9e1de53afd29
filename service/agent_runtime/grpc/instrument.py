"""Observing every RPC (metrics, server spans) in the handler path, not an interceptor.

Each method handler is wrapped once, when its service is registered, with the
probes of every observer bound for that method; a call then costs the probes'
own work and one extra frame. An aio `ServerInterceptor` would also await an
interceptor coroutine and build a new handler per call (that doubled the cost of
the metrics, see docs/observability.md). Services that register themselves
(health, reflection) are handed an `ObservedRegistrar` in place of the server.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from typing import Any, Iterable, Protocol, Sequence

import grpc

_OK = grpc.StatusCode.OK
_BEHAVIORS = {  # (request streaming, response streaming) -> handler field and grpc_type label
    (False, False): ("unary_unary", "unary"),
    (False, True): ("unary_stream", "server_stream"),
    (True, False): ("stream_unary", "client_stream"),
    (True, True): ("stream_stream", "bidi_stream"),
}


class RpcProbe(Protocol):
    """What one observer does around each call of one method."""

    def begin(self, context: grpc.aio.ServicerContext) -> Any: ...

    def end(self, token: Any, code: grpc.StatusCode) -> None: ...


class RpcObserver(Protocol):
    """Makes the probe of each method. One whose probes read the call's metadata says so
    with a true `wants_metadata` attribute (see `invocation_metadata`)."""

    def method(self, service: str, method: str, grpc_type: str) -> RpcProbe: ...


# The call's metadata as gRPC converted it for the method lookup (`HandlerCallDetails`),
# kept when an observer wants it. grpc.aio looks the method up in the call's own task,
# before it runs the handler there, so the handler's probes find it here; asking the
# context converts it all again.
_call_metadata: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "agent_runtime_call_metadata", default=None)


def invocation_metadata(context: grpc.aio.ServicerContext) -> Sequence[tuple[str, Any]]:
    """The call's metadata: as the method lookup kept it, else read from `context`."""
    metadata = _call_metadata.get()
    return metadata if metadata is not None else (context.invocation_metadata() or ())


class Gate(Protocol):
    """Whether the gated methods' stand-ins take the calls now (an attribute, or a property:
    read for every call of a gated method)."""

    closed: bool


class _Probes:
    """Several probes as one: begun in order, ended in reverse."""

    __slots__ = ("probes",)

    def __init__(self, probes: Sequence[RpcProbe]) -> None:
        self.probes = tuple(probes)

    def begin(self, context: grpc.aio.ServicerContext) -> list[Any]:
        return [probe.begin(context) for probe in self.probes]

    def end(self, tokens: list[Any], code: grpc.StatusCode) -> None:
        for probe, token in zip(reversed(self.probes), reversed(tokens)):
            probe.end(token, code)


def _status(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    return context.code() or _OK


def _failure(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a call that raised `exc` ends with."""
    code = context.code()
    if code is not None:
        return code  # aborted, or set by the handler before it raised
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        return (grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0
                else grpc.StatusCode.CANCELLED)
    return grpc.StatusCode.UNKNOWN


def _observed(behavior: Any, probe: RpcProbe) -> Any:
    """`behavior` (a coroutine or async generator function) begun and ended by `probe`."""
    if inspect.isasyncgenfunction(behavior):
        async def observed_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = probe.begin(context)
            try:
                async for response in behavior(request, context):
                    yield response
                code = _status(context)
            except BaseException as exc:
                code = _failure(exc, context)
                raise
            finally:
                probe.end(token, code)

        observed_stream.probe = probe
        return observed_stream

    async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = probe.begin(context)
        try:
            response = await behavior(request, context)
            code = _status(context)
            return response
        except BaseException as exc:
            code = _failure(exc, context)
            raise
        finally:
            probe.end(token, code)

    observed.probe = probe
    return observed


def _field(handler: grpc.RpcMethodHandler) -> tuple[str, str]:
    return _BEHAVIORS[(bool(handler.request_streaming), bool(handler.response_streaming))]


def _observed_as(handler: grpc.RpcMethodHandler, target: grpc.RpcMethodHandler, field: str,
                 behavior: Any) -> grpc.RpcMethodHandler:
    """`target` with `behavior` as its `field`, observed by the probe of `handler`'s method."""
    probe = getattr(getattr(handler, _field(handler)[0]), "probe", None)
    return target._replace(**{field: behavior if probe is None else _observed(behavior, probe)})


def served_as(handler: grpc.RpcMethodHandler, stand_in: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`stand_in` (of any shape) observed as `handler` is, so the calls it takes are
    counted and traced as calls of `handler`'s method."""
    field, _ = _field(stand_in)
    return _observed_as(handler, stand_in, field, getattr(stand_in, field))


def with_behavior(handler: grpc.RpcMethodHandler, behavior: Any) -> grpc.RpcMethodHandler:
    """`handler` answering with `behavior` instead (an interceptor's refusal, say), and
    observed as `handler` is, so the call is still counted and traced."""
    return _observed_as(handler, handler, _field(handler)[0], behavior)


def observe_handler(handler: grpc.RpcMethodHandler, service: str, method: str,
                    observers: Sequence[RpcObserver]) -> grpc.RpcMethodHandler:
    """`handler` with its behavior wrapped in the probes of `observers` for this method."""
    field, grpc_type = _field(handler)
    probes = [observer.method(service, method, grpc_type) for observer in observers]
    probe = probes[0] if len(probes) == 1 else _Probes(probes)
    return handler._replace(**{field: _observed(getattr(handler, field), probe)})


class _MethodTable(grpc.GenericRpcHandler):
    """The server's one generic handler: every method by its path ("/service/method"),
    then the generic handlers of services that gave no method table. A gated method's
    stand-in takes its calls while its gate is closed."""

    def __init__(self, registrar: "ObservedRegistrar") -> None:
        self.methods: dict[str, grpc.RpcMethodHandler] = {}
        self.gates: dict[str, tuple[Gate, grpc.RpcMethodHandler]] = {}
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registrar = registrar
        self.keeps_metadata = any(getattr(observer, "wants_metadata", False) for observer in registrar.observers)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path = details.method
        if self.keeps_metadata:
            _call_metadata.set(details.invocation_metadata)
        if self.gates:
            gate = self.gates.get(path)
            if gate is not None and gate[0].closed:
                return gate[1]
        handler = self.methods.get(path)
        if handler is not None or not self.generic:
            return handler
        for generic in self.generic:
            handler = generic.service(details)
            if handler is not None:
                _, service, method = path.split("/", 2)
                return self.registrar.observed(handler, service, method)
        return None


class ObservedRegistrar:
    """Stands in for the server when services register their handlers: serves them
    on `server` with every method observed by `observers` (nothing is wrapped when
    there are none).

    No method is registered with gRPC core in advance: grpc.aio keeps a pending request
    per registered method and waits on all of them each time a call arrives, so each
    registered method costs every call; with none, a call costs one lookup in the
    method table here (figures in docs/design.md)."""

    def __init__(self, server: grpc.aio.Server, observers: Iterable[RpcObserver]) -> None:
        self.observers = tuple(observers)
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._table = _MethodTable(self)
        server.add_generic_rpc_handlers((self._table,))

    def observed(self, handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
        if not self.observers:
            return handler
        known = self._wrapped.get(id(handler))
        if known is None:
            known = self._wrapped[id(handler)] = (
                handler, observe_handler(handler, service, method, self.observers))
        return known[1]

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """The methods of `service` by name (what generated `add_*_to_server` code hands
        in beside its generic handler, which then is never asked)."""
        for name, handler in handlers.items():
            self._table.methods[f"/{service}/{name}"] = self.observed(handler, service, name)

    def add_gates(self, service: str, gate: Gate, stand_ins: dict[str, grpc.RpcMethodHandler]) -> None:
        """While `gate.closed`, each method of `service` named in `stand_ins` is answered by
        its stand-in, observed as the method is. `gate.closed` is read as a call arrives,
        before anything of it is read: a stand-in can refuse a call without reading it."""
        for name, stand_in in stand_ins.items():
            path = f"/{service}/{name}"
            self._table.gates[path] = (gate, served_as(self._table.methods[path], stand_in))

    def add_generic_rpc_handlers(self, generic_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Generic handlers, asked for methods the table does not have (only code that
        registers no method table needs them)."""
        self._table.generic.extend(generic_handlers)
