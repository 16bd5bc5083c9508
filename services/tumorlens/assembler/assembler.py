"""The study assembler: hands each study to the queue once it has been quiet for ``stable_age``.

Any number of assemblers (one per listener process) may run against one job store; the claim
is a single atomic script, so each study version is queued exactly once. A claimed job stays
in the job store's dispatch set until its task message is in the queue, so an assembler that
dies between claim and send leaves the job for another one to send after ``dispatch_grace``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tumorlens.errors import InvalidUIDError, TumorlensError
from tumorlens.identifiers import InstanceKey
from tumorlens.listener.spool import Spool
from tumorlens.store.jobs import JobRef, JobStore

log = logging.getLogger(__name__)

Dispatcher = Callable[[JobRef], None]


class Assembler:
    def __init__(
        self,
        jobs: JobStore,
        dispatch: Dispatcher,
        stable_age: float,
        interval: float = 1.0,
        # A claim is handed to the queue within milliseconds; an entry older than this was
        # orphaned by a dead assembler, or put there by an operator's retry.
        dispatch_grace: float = 3.0,
    ) -> None:
        self.jobs = jobs
        self.dispatch = dispatch
        self.stable_age = stable_age
        self.interval = interval
        self.dispatch_grace = dispatch_grace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[JobRef]:
        """One pass: claim quiet studies and hand them (and orphaned claims) to the queue."""
        refs = self.jobs.claim_stable(self.stable_age)
        refs += self.jobs.stale_dispatches(self.dispatch_grace)
        for ref in refs:
            self.dispatch(ref)
            self.jobs.dispatched(ref)
            log.info("queued study %s v%d", ref.study_instance_uid, ref.version)
        return refs

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except TumorlensError as exc:
                # The job store or broker is down: keep trying; nothing is lost meanwhile.
                log.warning("assembler pass failed: %s", exc)
            except Exception:
                log.exception("assembler pass failed unexpectedly")
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="study-assembler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def reconcile_spool(spool: Spool, jobs: JobStore) -> int:
    """Count instances that are on disk but unknown to the job store; return how many.

    Files in the spool were fsync'ed before Success was answered, while Redis persists
    once a second; after a power cut the spool is the truth. Each study whose file count
    differs from the job store's count is walked and its missing instances recorded.
    """
    recovered = 0
    for study in spool.studies():
        try:
            files = list(spool.instances(study))
            if len(files) == jobs.known_instance_count(study):
                continue
            for series, sop, _path in files:
                if not jobs.is_known_instance(study, sop):
                    jobs.record_instance(InstanceKey(study, series, sop), "", "spool-recovery")
                    recovered += 1
        except InvalidUIDError as exc:
            # Only the listener writes here, so this is a foreign file: leave it alone.
            log.warning("spool entry %s ignored: %s", study[:80], exc)
    if recovered:
        log.warning("recovered %d instances from the spool into the job store", recovered)
    return recovered
