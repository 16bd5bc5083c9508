"""The DICOM listener: a pynetdicom Storage SCP (PS3.4 Annex B) and Verification SCP.

Handlers are bound with their dependencies, ``(evt.EVT_C_STORE, handler, [receiver])``, so
nothing here is global. Which peers may associate is decided in two places: the calling AE
title by pynetdicom's ACSE (an A-ASSOCIATE-RJ, PS3.8 7.1.1.9), the peer's address before any
PDU is read (the connection is closed).
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
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from tumorlens.config import Settings
from tumorlens.errors import (
    SUCCESS,
    ConfigurationError,
    TumorlensError,
    UndecodableDatasetError,
    dimse_status_for,
)
from tumorlens.listener.integrity import check_complete
from tumorlens.listener.receiver import ACCEPTED_SOP_CLASSES, InstanceReceiver, StoreRequest

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


class _FilteringServer(ThreadedAssociationServer):
    """Closes connections from hosts outside ``allowed_hosts`` before any PDU is read."""

    allowed_hosts: tuple[str, ...] = ()
    # Association threads are drained by Listener.stop with a deadline, not joined forever.
    block_on_close = False
    daemon_threads = True

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if _host_allowed(host, self.allowed_hosts):
            return True
        log.warning("connection from %s refused: host not in allowed_hosts", host)
        return False

    def shutdown(self) -> None:
        # pynetdicom's shutdown also unregisters from AE.start_server's list, which a server
        # from make_server is not on.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def _handle_echo(event: evt.Event) -> int:
    return SUCCESS


def _handle_store(event: evt.Event, receiver: InstanceReceiver) -> int:
    primitive = cast(C_STORE, event.request)
    request = StoreRequest(
        affected_sop_class_uid=str(primitive.AffectedSOPClassUID),
        affected_sop_instance_uid=str(primitive.AffectedSOPInstanceUID),
        calling_aet=str(event.assoc.requestor.ae_title),
        calling_host=str(event.assoc.requestor.address),
    )
    try:
        dataset = _decode(event)
        encoded: bytes = event.encoded_dataset()
    except TumorlensError as exc:
        log.warning(
            "instance %s from %s@%s cannot be understood: %s",
            request.affected_sop_instance_uid[:64],
            request.calling_aet,
            request.calling_host,
            exc,
        )
        return dimse_status_for(exc)
    return receiver.receive(dataset, encoded, request)


def _decode(event: evt.Event) -> Dataset:
    try:
        dataset: Dataset = event.dataset
        check_complete(dataset, event.context.transfer_syntax)
    except TumorlensError:
        raise
    # pydicom raises a wide range of exception types for malformed input; any of them
    # means "cannot understand", never a crash of the association.
    except Exception as exc:
        raise UndecodableDatasetError(f"data set cannot be decoded: {exc}") from exc
    return dataset


def _log_rejected(event: evt.Event) -> None:
    requestor = event.assoc.requestor
    log.warning(
        "association from %s@%s rejected (calling AE title not allowed or too many associations)",
        requestor.ae_title,
        requestor.address,
    )


def build_ae(settings: Settings) -> AE:
    """An AE configured from settings: contexts, limits and timeouts."""
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification)
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.require_called_aet = True
    if settings.allowed_calling_aets:
        ae.require_calling_aet = list(settings.allowed_calling_aets)
    return ae


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


class Listener:
    """Runs the SCP in a background thread; :meth:`stop` drains open associations."""

    def __init__(self, settings: Settings, receiver: InstanceReceiver) -> None:
        self.settings = settings
        self.receiver = receiver
        self.ae = build_ae(settings)
        self._server: _FilteringServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("listener not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, _handle_store, [self.receiver]),
            (evt.EVT_REJECTED, _log_rejected),
        ]
        server_cls = type(
            "FilteringServer", (_FilteringServer,), {"allowed_hosts": self.settings.allowed_hosts}
        )
        try:
            server = self.ae.make_server(
                (self.settings.dicom_host, self.settings.dicom_port),
                ae_title=self.settings.ae_title,
                ssl_context=build_ssl_context(self.settings),
                evt_handlers=handlers,
                server_class=server_cls,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {self.settings.dicom_host}:{self.settings.dicom_port}: {exc}"
            ) from exc
        self._server = cast(_FilteringServer, server)
        self._thread = threading.Thread(
            target=server.serve_forever, name="dicom-listener", daemon=True
        )
        self._thread.start()
        log.info(
            "DICOM listener %s on %s:%d",
            self.settings.ae_title,
            self.settings.dicom_host,
            self.port,
        )

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, let open associations finish, then abort the rest.

        Aborting loses nothing: an instance is acknowledged only once it is on disk.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + drain_timeout
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in server.active_associations:
            log.warning("aborting association with %s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        if self._thread is not None:
            self._thread.join(timeout=5)
