"""Optional TLS from certificate files (PEM; a Secret mounted in Kubernetes).

A server serves TLS when its settings name a certificate and key (TLS_CERT_FILE,
TLS_KEY_FILE), plaintext otherwise. A client (services/common/clients.py `open_channel`)
uses TLS, trusting the CA file's certificates, when the process was given TLS_CA_FILE: set
once at start-up (`configure_client_tls`), since every channel of a process goes to the same
deployment. A certificate must name the addresses the services are called by (the
Kubernetes Service names; 127.0.0.1 or localhost for a local stack).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from services.common.config import Settings

_client_root_certificates: bytes | None = None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials, or None to serve plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())])


def configure_client_tls(ca_file: Path | None) -> None:
    """Makes this process's channels TLS, trusting `ca_file`; None: plaintext channels."""
    global _client_root_certificates
    _client_root_certificates = ca_file.read_bytes() if ca_file is not None else None


def channel_credentials() -> grpc.ChannelCredentials | None:
    """The credentials of this process's channels, or None for plaintext."""
    if _client_root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=_client_root_certificates)
