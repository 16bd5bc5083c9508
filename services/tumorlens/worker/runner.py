"""One attempt at one study version: the states a job goes through, recorded as it goes.

The Celery task only calls :func:`run_job`; the steps are plain functions, so the same code
runs under Celery, in tests, and (later) in the offline ``tumorlens infer``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from tumorlens.config import Settings
from tumorlens.errors import InvalidTransitionError, JobStoreUnavailableError, TumorlensError
from tumorlens.listener.spool import Spool
from tumorlens.store.jobs import AttemptDecision, JobRef, JobStore
from tumorlens.store.states import JobState
from tumorlens.worker.inspect import inspect_study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process holds for its lifetime (models will live here too)."""

    settings: Settings
    jobs: JobStore
    spool: Spool


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
        ctx.jobs.set_step(ref, JobState.RUNNING, "inspect-series")
        summary = inspect_study(ctx.spool, ref.study_instance_uid)
        ctx.jobs.set_details(ref, **summary.as_details())
        ctx.jobs.transition(ref, JobState.DONE)
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


def _fail(ctx: WorkerContext, ref: JobRef, reason: str) -> None:
    try:
        ctx.jobs.transition(ref, JobState.FAILED, reason=reason)
    except JobStoreUnavailableError:
        raise  # the Celery task retries with backoff; nothing to record without Redis
    except InvalidTransitionError as exc:
        log.info("study %s v%d: could not mark FAILED: %s", *_ids(ref), exc)


def _ids(ref: JobRef) -> tuple[str, int]:
    return ref.study_instance_uid, ref.version
