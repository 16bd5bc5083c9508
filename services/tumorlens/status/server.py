"""Start the status API's gRPC server.

Plaintext on loopback (the default ``grpc_address`` 127.0.0.1:50051); anywhere else TLS from
the service's settings, see :mod:`tumorlens.status.transport`. When the optional
``grpcio-health-checking`` package is installed, the standard ``grpc.health.v1.Health``
service is served too, kept in step with :class:`~tumorlens.status.health.HealthProbe` so
that load balancers and ``grpc_health_probe`` see the same verdict as ``Health``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from tumorlens.config import Settings
from tumorlens.errors import ConfigurationError
from tumorlens.status.health import HealthProbe, default_probe
from tumorlens.status.servicer import StudyStatusServicer
from tumorlens.status.transport import server_credentials, split_address
from tumorlens.status.v1 import status_pb2, status_pb2_grpc
from tumorlens.store.jobs import JobStore

log = logging.getLogger(__name__)

SERVICE_NAME = status_pb2.DESCRIPTOR.services_by_name["StudyStatus"].full_name


@dataclass
class StatusServer:
    """A started status server: the ``grpc.Server``, where it listens, and how to stop it."""

    server: grpc.Server
    address: str  # as bound, with the real port when 0 was asked for
    port: int
    servicer: StudyStatusServicer
    _stopping: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace: float | None = 2.0) -> threading.Event:
        """Stop accepting calls; running ones get ``grace`` seconds. Like ``grpc.Server``."""
        self._stopping.set()
        event: threading.Event = self.server.stop(grace)
        return event

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self.server.wait_for_termination(timeout))

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop().wait()


def start_status_server(
    settings: Settings,
    jobs: JobStore,
    health: HealthProbe | None = None,
    *,
    address: str | None = None,
    max_workers: int = 16,
    max_watches: int = 8,
    poll_interval: float = 0.5,
    allow_insecure: bool = False,
    standard_health_interval: float = 10.0,
) -> StatusServer:
    """Serve ``StudyStatus`` on ``address`` (default ``settings.grpc_address``; port 0 picks
    a free one). ``health`` defaults to :func:`~tumorlens.status.health.default_probe`.
    ``allow_insecure`` permits plaintext off loopback (e.g. inside an isolated container
    network)."""
    address = address or settings.grpc_address
    health = health or default_probe(settings, jobs)
    is_unix = address.startswith("unix:")
    if not is_unix:
        split_address(address)  # a clear error for a malformed address, before grpc's
    if max_watches >= max_workers:
        raise ConfigurationError("max_watches must leave server threads for unary calls")
    servicer = StudyStatusServicer(
        jobs, health, poll_interval=poll_interval, max_watches=max_watches
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="status-api"),
        # Beyond this, calls fail fast with RESOURCE_EXHAUSTED instead of queueing unseen.
        maximum_concurrent_rpcs=max_workers * 4,
        # gRPC sets SO_REUSEPORT by default, so a second service on the same port would
        # start silently and take half the calls: make a port clash an error instead.
        options=[("grpc.so_reuseport", 0)],
    )
    status_pb2_grpc.add_StudyStatusServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    credentials = server_credentials(address, settings, allow_insecure=allow_insecure)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
        raise ConfigurationError(f"status API cannot listen on {address}: {exc}") from exc
    if not is_unix and port == 0:  # older grpc reports a failed bind as port 0
        raise ConfigurationError(f"status API cannot listen on {address}")
    running = StatusServer(
        server=server,
        address=address if is_unix else _with_port(split_address(address)[0], port),
        port=port,
        servicer=servicer,
    )
    _add_standard_health(running, health, standard_health_interval)
    server.start()
    log.info(
        "status API listening on %s (%s)",
        running.address,
        "plaintext" if credentials is None else "TLS",
    )
    return running


def _with_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _add_standard_health(running: StatusServer, probe: HealthProbe, interval: float) -> None:
    """Serve ``grpc.health.v1.Health`` if its package is installed, updated every
    ``interval`` s from ``probe`` (its servicer only reports a status someone sets)."""
    try:
        # By name: the package is optional and has no type information.
        grpc_health: Any = importlib.import_module("grpc_health.v1.health")
        health_pb2: Any = importlib.import_module("grpc_health.v1.health_pb2")
        health_pb2_grpc: Any = importlib.import_module("grpc_health.v1.health_pb2_grpc")
    except ImportError:
        return
    servicer = grpc_health.HealthServicer()
    # Its default is SERVING; until the first probe has answered that would be a guess.
    for name in ("", SERVICE_NAME):
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, running.server)
    log.info("serving grpc.health.v1.Health too")

    def update() -> None:
        while True:
            serving = probe.check().serving
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                servicer.set(name, status)
            if running._stopping.wait(interval):
                servicer.enter_graceful_shutdown()
                return

    threading.Thread(target=update, name="status-api-health", daemon=True).start()
