"""Health of the service, component by component, for the status API and its probes.

A :class:`HealthProbe` runs a list of named checks, each a plain callable, so that checks
living elsewhere (the workers' model sessions, the listener's association count) can be added
without this module knowing about them. A check answers ``(ok, detail)`` or raises; either
way it is bounded by the probe's timeout, so a hung Redis makes Health say so rather than
hang with it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from tumorlens.config import Settings
from tumorlens.errors import TumorlensError
from tumorlens.store.jobs import JobStore

log = logging.getLogger(__name__)

CheckResult = tuple[bool, str]
Check = Callable[[], CheckResult]


@dataclass(frozen=True)
class HealthCheck:
    """One component: ``critical`` ones decide whether the service is serving."""

    name: str
    check: Check
    critical: bool = True


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    ok: bool
    detail: str
    critical: bool


@dataclass(frozen=True)
class HealthReport:
    serving: bool
    components: tuple[ComponentHealth, ...]


class HealthProbe:
    """Runs its checks concurrently, each within ``timeout`` seconds."""

    def __init__(self, checks: Sequence[HealthCheck] = (), timeout: float = 2.0) -> None:
        self._checks: list[HealthCheck] = list(checks)
        self.timeout = timeout

    @property
    def checks(self) -> tuple[HealthCheck, ...]:
        return tuple(self._checks)

    def add(self, name: str, check: Check, *, critical: bool = True) -> None:
        if any(c.name == name for c in self._checks):
            raise ValueError(f"health check {name!r} already added")
        self._checks.append(HealthCheck(name, check, critical))

    def check(self) -> HealthReport:
        # Daemon threads, not an executor: a check that never returns must neither stall
        # this call beyond the timeout nor keep the process from exiting.
        checks = tuple(self._checks)  # add() may run meanwhile
        results: dict[str, ComponentHealth] = {}

        def run(check: HealthCheck) -> None:
            results[check.name] = _run(check)

        threads = [
            threading.Thread(target=run, args=(c,), name=f"health-{c.name}", daemon=True)
            for c in checks
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self.timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        components = tuple(
            results.get(c.name)
            or ComponentHealth(c.name, False, f"no answer within {self.timeout:g} s", c.critical)
            for c in checks
        )
        serving = all(c.ok for c in components if c.critical)
        return HealthReport(serving=serving, components=components)


def _run(check: HealthCheck) -> ComponentHealth:
    try:
        ok, detail = check.check()
    except TumorlensError as exc:  # says what is wrong in its own words
        ok, detail = False, str(exc)
    except Exception as exc:  # a failing check is a finding, not an error of the probe
        log.debug("health check %s raised", check.name, exc_info=True)
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return ComponentHealth(check.name, ok, detail, check.critical)


# --- the checks ---------------------------------------------------------------------------
def job_store_check(jobs: JobStore) -> Check:
    def check() -> CheckResult:
        # JobStoreUnavailableError's message already says "job store (Redis) unreachable".
        return (True, "reachable") if jobs.ping() else (False, "PING not answered")

    return check


def broker_check(url: str, timeout: float = 1.0) -> Check:
    """A Celery broker on its own Redis (one on the job store's Redis is checked by it)."""

    def check() -> CheckResult:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return False, f"broker (Redis) unreachable: {exc}"
        finally:
            client.close()
        return True, "reachable"

    return check


def spool_check(spool_dir: Path, reserve_mb: int) -> Check:
    """The spool takes a file and has more than the listener's reserve free."""

    def check() -> CheckResult:
        # The listener creates the spool on first use; until then its parent must take it.
        existing = spool_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".health-"):
                pass
        except OSError as exc:
            return False, f"{existing} is not writable: {exc.strerror or exc}"
        free_mb = shutil.disk_usage(existing).free // (1024 * 1024)
        where = str(spool_dir) if existing == spool_dir else f"{spool_dir} (not created yet)"
        if free_mb <= reserve_mb:
            return False, f"{where}: {free_mb} MB free, reserve is {reserve_mb} MB"
        return True, f"{where}: {free_mb} MB free"

    return check


def models_check(models_dir: Path, required: Sequence[str] = ()) -> Check:
    """``required`` model files exist in ``models_dir``; without a list, any ``*.onnx`` does."""

    def check() -> CheckResult:
        if required:
            missing = [name for name in required if not (models_dir / name).is_file()]
            if missing:
                return False, f"missing in {models_dir}: {', '.join(missing)}"
            return True, f"{len(required)} models: {', '.join(required)}"
        found = sorted(p.name for p in models_dir.glob("*.onnx")) if models_dir.is_dir() else []
        if not found:
            return False, "no models installed"
        return True, f"{len(found)} models: {', '.join(found)}"

    return check


def default_probe(
    settings: Settings,
    jobs: JobStore,
    *,
    broker_url: str | None = None,
    required_models: Sequence[str] = (),
    models_critical: bool = False,
) -> HealthProbe:
    """The service's checks. ``broker_url`` only when the broker is not the job store's Redis.

    Models are not critical until the model zoo ships with the service: until then a fresh
    install would never be serving.
    """
    probe = HealthProbe()
    probe.add("job_store", job_store_check(jobs))
    if broker_url:
        probe.add("broker", broker_check(broker_url))
    else:
        store = job_store_check(jobs)

        def shared_broker() -> CheckResult:
            ok, detail = store()
            return ok, f"{detail} (the job store's Redis)" if ok else detail

        probe.add("broker", shared_broker)
    probe.add("spool", spool_check(settings.spool_dir, settings.disk_reserve_mb))
    probe.add(
        "models", models_check(settings.models_dir, required_models), critical=models_critical
    )
    return probe
