"""How the status API's server and clients connect: plaintext on loopback, TLS elsewhere.

RetryStudy and CancelStudy change jobs, so the API is never served unencrypted beyond this
machine unless explicitly allowed. Off loopback both sides use the service's TLS settings
(``tls_cert``/``tls_key``/``tls_ca``); with ``tls_ca`` the server also requires client
certificates signed by it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from tumorlens.config import Settings
from tumorlens.errors import ConfigurationError


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigurationError(f"address {address!r} is not of the form HOST:PORT")
    return host.strip("[]"), int(port)


def is_local_address(address: str) -> bool:
    """Whether only this machine can reach ``address`` (loopback or a Unix socket)."""
    if address.startswith("unix:"):
        return True
    host, _ = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: may resolve to anything
        return False


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc


def server_credentials(
    address: str, settings: Settings, *, allow_insecure: bool = False
) -> grpc.ServerCredentials | None:
    """TLS credentials for serving on ``address``; None means plaintext."""
    if is_local_address(address):
        return None
    if settings.tls_cert is not None and settings.tls_key is not None:
        ca = _read(settings.tls_ca)
        return grpc.ssl_server_credentials(
            [(_read(settings.tls_key), _read(settings.tls_cert))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
    if allow_insecure:
        return None
    raise ConfigurationError(
        f"refusing to serve the status API without TLS on {address}: bind it to loopback "
        "(grpc_address 127.0.0.1:PORT) or set tls_cert and tls_key"
    )


def open_channel(address: str, settings: Settings | None = None) -> grpc.Channel:
    """A channel to the status API, with TLS from ``settings`` when not on loopback."""
    if is_local_address(address):
        return grpc.insecure_channel(address)
    if settings is None:  # the system's trusted CAs, no client certificate
        return grpc.secure_channel(address, grpc.ssl_channel_credentials())
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca),
        private_key=_read(settings.tls_key),
        certificate_chain=_read(settings.tls_cert),
    )
    return grpc.secure_channel(address, credentials)
