"""Bearer-token authentication: a server interceptor, installed only when a token is set.

Callers send `authorization: Bearer <token>` metadata. The token comes from
`auth_token_file` (re-read when the file changes, looked at no more than once a
second, as a mounted Kubernetes Secret is updated in place) or from the
environment. Comparison is constant-time. Services named in `auth_exempt`
(health and reflection by default, so kubelet probes need no token) pass
without one. A token is never logged and never put in an error message.

An operator token (`auth_operator_token_file` or the environment) authenticates
too, and marks its caller as the operator: `is_operator` tells the servicer, which
lets the operator cancel runs of any user.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from typing import Any, Awaitable, Callable, Iterable

import grpc

from ..config import ConfigError, ServerConfig, env_name
from ..errors import Unauthenticated
from .instrument import with_behavior
from .status import abort

logger = logging.getLogger("agent_runtime.auth")

RECHECK_SECONDS = 1.0
_SCHEME = "bearer "


class TokenFile:
    """The expected token, from a file; a changed file is re-read at most once a second.

    A file that becomes empty or unreadable lets nobody in (fail closed) until it is fixed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._token = b""
        self._next_check = 0.0
        self.current()
        if not self._token:
            raise ConfigError(f"auth_token_file {path} is empty or unreadable")

    def current(self) -> bytes:
        now = time.monotonic()
        if now >= self._next_check:
            with self._lock:
                self._next_check = now + RECHECK_SECONDS
                self._reload()
        return self._token

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return
            with open(self.path, "rb") as f:
                token = f.read().strip()
        except OSError as exc:
            if self._token:
                logger.error("auth token file %s cannot be read (%s); refusing every call until "
                             "it can", self.path, exc.strerror)
            self._stamp, self._token = None, b""
            return
        if self._stamp is not None:
            logger.info("auth token reloaded from %s", self.path)
        if not token:
            logger.error("auth token file %s is empty; refusing every call until it is not", self.path)
        self._stamp, self._token = stamp, token


class FixedToken:
    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token.strip().encode()
        if not self._token:
            raise ConfigError(f"{env_name('auth_token')} is empty")

    def current(self) -> bytes:
        return self._token


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through when its bearer token (or the operator's) matches, or its
    service is exempt."""

    def __init__(self, token: TokenFile | FixedToken, exempt: Iterable[str] = (),
                 operator: TokenFile | FixedToken | None = None) -> None:
        self.token = token
        self.exempt = frozenset(exempt)
        self.operator = operator

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method[1:method.rfind("/")] in self.exempt:
            return await continuation(details)
        reason = self.refusal(details.invocation_metadata)
        if reason is None:
            return await continuation(details)
        logger.debug("refused %s: %s", method, reason)
        handler = await continuation(details)
        return _denial(handler, reason)

    def refusal(self, metadata: Any) -> str | None:
        """Why a call with this metadata is refused; None when its token is right."""
        presented = None
        for key, value in metadata or ():
            if key == "authorization":
                presented = value
                break
        if presented is None:
            return "missing credentials: send `authorization: Bearer <token>` metadata"
        if isinstance(presented, bytes) or presented[:len(_SCHEME)].lower() != _SCHEME:
            return "malformed credentials: expected `authorization: Bearer <token>`"
        if not _matches(presented, self.token) and not (self.operator and _matches(presented, self.operator)):
            return "invalid bearer token"
        return None


def _matches(presented: str, token: TokenFile | FixedToken) -> bool:
    """Whether `presented` (an `authorization` value) is `Bearer <token>`; constant-time."""
    expected = token.current()
    return (bool(expected) and presented[:len(_SCHEME)].lower() == _SCHEME
            and hmac.compare_digest(presented[len(_SCHEME):].strip().encode(), expected))


def is_operator(operator: TokenFile | FixedToken | None, metadata: Any) -> bool:
    """Whether a call's metadata carries the operator's bearer token."""
    if operator is None:
        return False
    for key, value in metadata or ():
        if key == "authorization":
            return isinstance(value, str) and _matches(value, operator)
    return False


def operator_token(config: ServerConfig) -> TokenFile | FixedToken | None:
    """The operator's token, when one is configured."""
    if config.auth_operator_token_file:
        return TokenFile(config.auth_operator_token_file)
    if config.auth_operator_token:
        return FixedToken(config.auth_operator_token)
    return None


def _denial(handler: grpc.RpcMethodHandler | None, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED with `reason`
    without reading the request; observed as `handler` is, so refusals are counted and
    traced like any other call."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort(context, Unauthenticated(reason))

    if handler is None:  # an unknown method: refused before it would be UNIMPLEMENTED
        return grpc.unary_unary_rpc_method_handler(deny)
    return with_behavior(handler, deny)._replace(request_deserializer=None)


def interceptors(config: ServerConfig, operator: TokenFile | FixedToken | None = None
                 ) -> list[grpc.aio.ServerInterceptor]:
    """The auth interceptor when a token is configured; nothing (and no cost) otherwise."""
    if config.auth_token_file:
        return [AuthInterceptor(TokenFile(config.auth_token_file), config.auth_exempt, operator)]
    if config.auth_token:
        return [AuthInterceptor(FixedToken(config.auth_token), config.auth_exempt, operator)]
    return []
