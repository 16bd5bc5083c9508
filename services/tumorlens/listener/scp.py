"""The DICOM listener: Storage SCP (PS3.4 Annex B) for MR and Verification SCP, over TCP or TLS.

Peers are filtered twice: by address before any PDU is read (the connection is closed), and by
calling AE title in A-ASSOCIATE (A-ASSOCIATE-RJ, PS3.8 9.3.4). Each association runs in its own
thread (:mod:`tumorlens.listener.upper_layer`); each complete C-STORE goes through
:class:`~tumorlens.listener.receiver.InstanceReceiver`, which answers Success only once the
instance is on disk.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES
from pynetdicom.presentation import PresentationContext, build_context

from tumorlens.config import Settings
from tumorlens.errors import ConfigurationError, TumorlensError
from tumorlens.listener.receiver import ACCEPTED_SOP_CLASSES, InstanceReceiver, StoreRequest
from tumorlens.listener.upper_layer import (
    VERIFICATION,
    AcceptorPolicy,
    Association,
    ConnectionCounter,
    StoreIndication,
    decode_data_set,
    part10_bytes,
    status_of,
)

log = logging.getLogger(__name__)


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    if not allowed:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in allowed
    for entry in allowed:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            # A host name: compare with what it resolves to.
            try:
                if host in {info[4][0] for info in socket.getaddrinfo(entry, None)}:
                    return True
            except OSError:
                continue
    return False


def supported_contexts() -> tuple[PresentationContext, ...]:
    """Verification plus every MR storage class in every transfer syntax pynetdicom knows."""
    contexts = [build_context(VERIFICATION)]
    contexts += [build_context(uid, ALL_TRANSFER_SYNTAXES) for uid in ACCEPTED_SOP_CLASSES]
    for context_id, context in enumerate(contexts, start=1):
        context.context_id = 2 * context_id - 1
    return tuple(contexts)


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Server-side TLS (PS3.15 B.1 secure transport); client certificates if a CA is set."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_ca is not None:
            context.load_verify_locations(cafile=settings.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"TLS certificate/key/CA unusable: {exc}") from exc
    return context


class StorageHandler:
    """From a complete C-STORE indication to a status: decode, check, store, count."""

    def __init__(self, receiver: InstanceReceiver, ae_title: str) -> None:
        self.receiver = receiver
        self.ae_title = ae_title

    def __call__(self, indication: StoreIndication) -> tuple[int, str]:
        request = StoreRequest(
            affected_sop_class_uid=indication.sop_class_uid,
            affected_sop_instance_uid=indication.sop_instance_uid,
            calling_aet=indication.calling_aet,
            calling_host=indication.calling_host,
        )
        try:
            dataset = decode_data_set(indication)
        except TumorlensError as exc:
            log.warning(
                "instance %s from %s@%s cannot be understood: %s",
                indication.sop_instance_uid[:64],
                indication.calling_aet,
                indication.calling_host,
                exc,
            )
            return status_of(exc)
        return self.receiver.receive(dataset, part10_bytes(indication, self.ae_title), request)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    # Association threads are drained by Listener.stop with a deadline, not joined forever.
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, listener: Listener, address: tuple[str, int]) -> None:
        self.listener = listener
        super().__init__(address, _Connection)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        if _host_allowed(host, self.listener.settings.allowed_hosts):
            return True
        log.warning("connection from %s refused: host not in allowed_hosts", host)
        return False


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        listener = self.server.listener
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with listener.connections:
            if listener.ssl_context is not None:
                sock.settimeout(listener.settings.acse_timeout)
                try:
                    sock = listener.ssl_context.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    log.warning("TLS handshake with %s failed: %s", self.client_address[0], exc)
                    return
            association = Association(
                sock,
                self.client_address,
                listener.policy,
                listener.handler,
                lambda: listener.connections.value,
            )
            listener.register(association)
            try:
                association.run()
            finally:
                listener.unregister(association)
                if sock is not self.request:
                    sock.close()


class Listener:
    """Runs the SCP in background threads; :meth:`stop` drains open associations."""

    def __init__(self, settings: Settings, receiver: InstanceReceiver) -> None:
        self.settings = settings
        self.handler = StorageHandler(receiver, settings.ae_title)
        self.policy = AcceptorPolicy(
            ae_title=settings.ae_title,
            allowed_calling_aets=settings.allowed_calling_aets,
            max_pdu_size=settings.max_pdu_size,
            max_associations=settings.max_associations,
            acse_timeout=settings.acse_timeout,
            network_timeout=settings.network_timeout,
            dimse_timeout=settings.dimse_timeout,
            supported=supported_contexts(),
        )
        self.ssl_context = build_ssl_context(settings)
        self.connections = ConnectionCounter()
        self._associations: set[Association] = set()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("listener not started")
        return int(self._server.server_address[1])

    def register(self, association: Association) -> None:
        with self._lock:
            self._associations.add(association)

    def unregister(self, association: Association) -> None:
        with self._lock:
            self._associations.discard(association)

    def start(self) -> None:
        address = (self.settings.dicom_host, self.settings.dicom_port)
        try:
            self._server = _Server(self, address)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {address[0]}:{address[1]}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dicom-listener", daemon=True
        )
        self._thread.start()
        log.info(
            "DICOM listener %s on %s:%d%s",
            self.settings.ae_title,
            self.settings.dicom_host,
            self.port,
            " (TLS)" if self.ssl_context else "",
        )

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, let open associations finish, then close the rest.

        Closing loses nothing: an instance is acknowledged only once it is on disk.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + drain_timeout
        while self.connections.value and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            remaining = list(self._associations)
        for association in remaining:
            log.warning("closing association with %s at shutdown", association.calling_aet)
            association.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
