"""One attempt at one study version: the states a job goes through, recorded as it goes.

The Celery task only calls :func:`run_job`; the steps are plain functions, so the same code
runs under Celery, in tests, and (later) in the offline ``tumorlens infer``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from tumorlens.analysis.analyse import analyse
from tumorlens.analysis.instances import StudyInstances
from tumorlens.analysis.models import ModelSet
from tumorlens.config import Settings
from tumorlens.errors import (
    DeliveryError,
    InvalidTransitionError,
    JobStoreUnavailableError,
    TumorlensError,
)
from tumorlens.listener.spool import Spool
from tumorlens.sender.deliver import RetryPolicy, deliver, resolve_destinations
from tumorlens.sender.outbox import Outbox
from tumorlens.store.jobs import AttemptDecision, JobRef, JobStore
from tumorlens.store.states import JobState

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a worker process holds for its lifetime: job store, spool, outbox and the models
    (ONNX Runtime sessions, loaded at the first study and kept)."""

    settings: Settings
    jobs: JobStore
    spool: Spool
    retry_policy: RetryPolicy | None = None
    _models: ModelSet | None = field(default=None, repr=False)

    @property
    def models(self) -> ModelSet:
        if self._models is None:
            self._models = ModelSet.load(self.settings)
        return self._models

    @property
    def outbox(self) -> Outbox:
        return Outbox(self.settings.outbox_dir)

    @property
    def delivery_policy(self) -> RetryPolicy:
        return self.retry_policy or RetryPolicy(attempts=self.settings.delivery_attempts)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(ref: JobRef, ctx: WorkerContext) -> JobState:
    """Run one attempt; returns the state the job is left in."""
    decision = ctx.jobs.begin_attempt(ref, ctx.settings.max_attempts, worker_identity())
    if decision is AttemptDecision.SKIP:
        log.info("study %s v%d: nothing to do (already finished or cancelled)", *_ids(ref))
        return ctx.jobs.get(ref.study_instance_uid, ref.version).state
    if decision is AttemptDecision.DEAD_LETTER:
        log.error("study %s v%d: attempts exhausted, now FAILED", *_ids(ref))
        return JobState.FAILED
    try:
        if ctx.settings.debug_task_pause > 0:
            ctx.jobs.set_step(ref, JobState.RUNNING, "debug-pause")
            time.sleep(ctx.settings.debug_task_pause)
        _analyse_and_send(ref, ctx)
        return JobState.DONE
    except JobStoreUnavailableError:
        raise  # the Celery task retries with backoff; nothing to record without Redis
    except InvalidTransitionError as exc:
        # Cancelled (or otherwise moved on) by someone else while we ran: leave it be.
        log.info("study %s v%d: stopped: %s", *_ids(ref), exc)
        return ctx.jobs.get(ref.study_instance_uid, ref.version).state
    except TumorlensError as exc:
        log.warning("study %s v%d failed: %s", *_ids(ref), exc)
        _fail(ctx, ref, str(exc))
        return JobState.FAILED
    except Exception as exc:
        log.exception("study %s v%d: internal error", *_ids(ref))
        _fail(ctx, ref, f"internal error: {type(exc).__name__}: {exc}")
        return JobState.FAILED


def _analyse_and_send(ref: JobRef, ctx: WorkerContext) -> None:
    """The pipeline's steps, each in the job timeline; results to the outbox, then sent."""
    ctx.jobs.set_step(ref, JobState.RUNNING, "load-models")
    models = ctx.models
    instances = StudyInstances.from_spool(ctx.spool, ref.study_instance_uid)
    analysis = analyse(
        instances,
        ref.version,
        models,
        ctx.settings,
        on_step=lambda step: ctx.jobs.set_step(ref, JobState.RUNNING, step),
    )
    ctx.jobs.set_details(ref, **analysis.result)
    ctx.jobs.set_step(ref, JobState.RUNNING, "outbox")
    job = ctx.jobs.get(ref.study_instance_uid, ref.version)
    batch = ctx.outbox.write(
        ref.study_instance_uid, ref.version, analysis.objects, calling_aet=job.calling_aet
    )
    analysis.save_maps(batch.folder)  # kept for audit, never sent
    ctx.jobs.set_step(ref, JobState.SENDING, "deliver")
    try:
        destinations = resolve_destinations(ctx.settings, job.calling_aet)
        report = deliver(batch, destinations, ctx.settings.ae_title, ctx.delivery_policy)
    except DeliveryError as exc:
        raise DeliveryError(
            f"{exc}; the results stay in {batch.folder} (tumorlens resend {ref.study_instance_uid})"
        ) from exc
    ctx.jobs.set_details(
        ref, delivered={k: v for k, v in report.sent.items()}, delivery_attempts=report.attempts
    )
    ctx.jobs.transition(ref, JobState.DONE)


def _fail(ctx: WorkerContext, ref: JobRef, reason: str) -> None:
    try:
        ctx.jobs.transition(ref, JobState.FAILED, reason=reason)
    except JobStoreUnavailableError:
        raise  # the Celery task retries with backoff; nothing to record without Redis
    except InvalidTransitionError as exc:
        log.info("study %s v%d: could not mark FAILED: %s", *_ids(ref), exc)


def _ids(ref: JobRef) -> tuple[str, int]:
    return ref.study_instance_uid, ref.version
