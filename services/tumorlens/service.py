"""Composition root: builds the long-running parts from settings and stops them in order.

``serve`` = job store + listener + assembler + status API + a supervised worker process;
``listen`` and ``worker`` run the halves separately for scale-out with a shared Redis.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from tumorlens.assembler.assembler import Assembler, reconcile_spool
from tumorlens.config import Settings, settings_environ
from tumorlens.listener.receiver import InstanceReceiver
from tumorlens.listener.scp import Listener
from tumorlens.listener.spool import Spool
from tumorlens.store.embedded_redis import EmbeddedRedis
from tumorlens.store.jobs import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    settings: Settings
    redis_url: str
    jobs: JobStore
    spool: Spool


@contextlib.contextmanager
def open_backend(settings: Settings) -> Iterator[Backend]:
    """The job store (embedded Redis unless ``redis_url`` is set) and the spool."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    spool = Spool(settings.spool_dir, settings.disk_reserve_mb * 2**20)
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis(settings.data_dir)
        embedded.start()
        url = embedded.url
    try:
        jobs = JobStore.from_url(url)
        jobs.ping()
        yield Backend(settings=settings, redis_url=url, jobs=jobs, spool=spool)
    finally:
        if embedded is not None:
            embedded.stop()


class ShutdownSignal:
    """Turns SIGTERM/SIGINT into an event the main thread waits on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        self.received = signum
        self.event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


class WorkerSupervisor:
    """Runs ``tumorlens worker`` as a child process and restarts it if it dies."""

    def __init__(self, settings: Settings, redis_url: str, restart_delay: float = 2.0) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.restart_delay = restart_delay
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(settings_environ(self.settings))
        env["TUMORLENS_REDIS_URL"] = self.redis_url
        env.pop("TUMORLENS_CONFIG", None)  # everything is in the environment now
        # The worker watches this PID and exits with us (see childproc.die_with_supervisor).
        env["TUMORLENS_SUPERVISOR_PID"] = str(os.getpid())
        return subprocess.Popen([sys.executable, "-m", "tumorlens", "worker"], env=env)

    def start(self) -> None:
        self._process = self._spawn()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            if process is not None and process.poll() is not None and not self._stopping.is_set():
                log.error("worker exited with %s; restarting", process.returncode)
                self._stopping.wait(self.restart_delay)
                if not self._stopping.is_set():
                    self._process = self._spawn()
            self._stopping.wait(0.5)

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown: Celery finishes the task in hand, then exits."""
        self._stopping.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Killing is safe: the unacknowledged task is redelivered on the next start.
            log.warning("worker did not stop in %.0f s; killing it", timeout)
            process.kill()
            process.wait()


def start_status_server(backend: Backend) -> Any:
    """The gRPC status API, when this build has it."""
    try:
        from tumorlens.status.server import (  # type: ignore[import-not-found,unused-ignore]
            start_status_server as start,
        )
    except ImportError:
        log.warning("gRPC status API not available in this build")
        return None
    return start(backend.settings, backend.jobs)


def requeue_orphaned_tasks(app: Any) -> None:
    """Put tasks held by a worker that died with a killed ``serve`` back on the queue.

    Only with the embedded Redis, which no other host can reach: every task it still marks
    as unacknowledged belonged to our previous worker. (With a shared Redis, a vanished
    worker's tasks come back after ``broker_visibility_timeout``.)
    """
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        qos = channel.qos
        with channel.conn_or_acquire() as client:
            tags = list(client.hkeys(qos.unacked_key))
        for tag in tags:
            qos.restore_by_tag(tag)
    if tags:
        log.warning("requeued %d task(s) left unacknowledged by a previous worker", len(tags))


def run_listener_side(backend: Backend, shutdown: ShutdownSignal, worker: bool) -> int:
    """Listener + assembler + status API (+ a supervised worker); returns at shutdown."""
    from tumorlens.worker.celery_app import celery_dispatcher, create_celery

    settings = backend.settings
    reconcile_spool(backend.spool, backend.jobs)
    app = create_celery(settings, backend.redis_url)
    listener = Listener(settings, InstanceReceiver(backend.spool, backend.jobs))
    assembler = Assembler(
        backend.jobs, celery_dispatcher(app), settings.stable_age, settings.assembler_interval
    )
    supervisor = WorkerSupervisor(settings, backend.redis_url) if worker else None
    # Status API first: a port clash should stop us before any PACS is told "stored".
    status = start_status_server(backend)
    listener.start()
    assembler.start()
    if supervisor is not None:
        if not settings.redis_url:
            requeue_orphaned_tasks(app)
        supervisor.start()
    print(
        f"tumorlens ready: AE {settings.ae_title} on {settings.dicom_host}:{listener.port}, "
        f"status API {settings.grpc_address}, data {settings.data_dir}",
        flush=True,
    )
    try:
        shutdown.wait()
    finally:
        started = time.monotonic()
        listener.stop()
        assembler.stop()
        if supervisor is not None:
            supervisor.stop()
        if status is not None:
            status.stop(grace=2).wait()
        log.info("stopped in %.1f s", time.monotonic() - started)
    return 0


def run_service(settings: Settings, worker: bool) -> int:
    """``serve`` (worker=True) or ``listen``: run until SIGTERM/SIGINT, then stop in order."""
    shutdown = ShutdownSignal()
    shutdown.install()
    with open_backend(settings) as backend:
        return run_listener_side(backend, shutdown, worker=worker)
