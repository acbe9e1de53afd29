"""Server TLS and mutual TLS from PEM files that are re-read when they change.

Kubernetes updates a mounted Secret by swapping a symlink, so a certificate
rotation shows up as new file identities. gRPC asks `CertificateFiles.fetch` for
the current configuration at every TLS handshake (from one of its own threads);
it compares the files' stat stamps and re-reads them only when they changed. A
half-written or unreadable set is ignored (the previous certificate stays) and
tried again at the next handshake.
"""

from __future__ import annotations

import logging
import os
import threading

import grpc

from ..config import ConfigError, ServerConfig

logger = logging.getLogger("agent_runtime.tls")

_PEM_END = b"-----END "


class CertificateFiles:
    """The server's certificate chain, key and (for mutual TLS) client CA, as files."""

    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.paths = tuple(p for p in (cert, key, client_ca) if p)
        self.require_client_auth = bool(client_ca)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.initial = self._load()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self.paths:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        contents = []
        for path in self.paths:
            with open(path, "rb") as f:
                data = f.read()
            if _PEM_END not in data:
                raise ValueError(f"{path} is not a complete PEM file")
            contents.append(data)
        cert, key = contents[0], contents[1]
        root = contents[2] if self.require_client_auth else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=root)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed since the last look, else None."""
        with self._lock:
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                config = self._load()
            except (OSError, ValueError) as exc:
                logger.warning("TLS files changed but cannot be read yet (%s); keeping the "
                               "previous certificate", exc)
                return None
            self._stamp = stamp
        logger.info("TLS certificate reloaded from %s", ", ".join(self.paths))
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self.initial, self.fetch, self.require_client_auth)


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the configured files; None when TLS is off."""
    if not config.tls_cert:
        return None
    try:
        return CertificateFiles(config.tls_cert, config.tls_key, config.tls_client_ca).credentials()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"TLS files cannot be used: {exc}") from None
