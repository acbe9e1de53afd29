"""Server reflection that also answers a method's symbol.

grpcio-reflection looks symbols up with the descriptor pool's `FindFileContainingSymbol`,
which knows messages, enums and services but not methods (grpc/grpc#34743): `grpcurl
describe agent_runtime.v1.AgentRuntime.Invoke` got "Symbol not found", where Go and C++
servers answer it. The servicer is given a pool that finds a method's file through
`FindMethodByName`, both public protobuf API.
"""

from __future__ import annotations

from typing import Any, Iterable

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection


class MethodSymbols:
    """A descriptor pool as reflection reads it, with methods among its symbols."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:  # noqa: N802 (the pool's name)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._pool.FindMethodByName(symbol).containing_service.file  # KeyError if none


def servicer(service_names: Iterable[str]) -> reflection.aio.ReflectionServicer:
    """Reflection listing `service_names` and itself, answering any symbol of the default pool."""
    return reflection.aio.ReflectionServicer([*service_names, reflection.SERVICE_NAME],
                                             pool=MethodSymbols(descriptor_pool.Default()))
