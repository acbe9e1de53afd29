"""The store's connection: a `redis.asyncio` client made from the settings, and the
key names every store module uses (all under `store_prefix`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import ConfigError, ServerConfig

# Seconds start-up waits for the store's answer before calling it unreachable.
CHECK_TIMEOUT = 5.0


class Store:
    """A Redis client and the key prefix; made without I/O (`check()` connects)."""

    def __init__(self, url: str, *, password: str | None = None, prefix: str = "agent-runtime:") -> None:
        try:
            import redis.asyncio
        except ImportError:
            raise ConfigError("store_url needs the redis package: pip install 'agent-runtime[store]'") from None
        self.prefix = prefix
        options: dict[str, Any] = {"socket_connect_timeout": CHECK_TIMEOUT}
        if password:
            options["password"] = password
        try:
            self.where = _where(url)
            self.redis = redis.asyncio.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"store_url: {exc}") from None

    @classmethod
    def from_config(cls, cfg: ServerConfig) -> "Store | None":
        """The configured store, or None when `store_url` is empty."""
        if not cfg.store_url:
            return None
        password = None
        if cfg.store_password_file:
            try:
                password = Path(cfg.store_password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"store_password_file: {exc.strerror}: {cfg.store_password_file}") from None
        return cls(cfg.store_url, password=password, prefix=cfg.store_prefix)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def check(self) -> None:
        """Raise ConfigError, in one line, unless the store answers PING."""
        from redis.exceptions import RedisError

        try:
            await asyncio.wait_for(self.redis.ping(), CHECK_TIMEOUT)
        except TimeoutError:
            raise ConfigError(f"store_url: the store at {self.where} did not answer within "
                              f"{CHECK_TIMEOUT:g}s") from None
        except (RedisError, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"store_url: cannot use the store at {self.where}: {reason}") from None

    async def aclose(self) -> None:
        """Close the connections; a store that does not answer is left after CHECK_TIMEOUT."""
        try:
            await asyncio.wait_for(self.redis.aclose(), CHECK_TIMEOUT)
        except TimeoutError:
            pass


def _where(url: str) -> str:
    """`url` without its credentials, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"
