"""The Celery application: broker settings that make a lost worker cost a re-run, not a study.

- ``acks_late`` + ``reject_on_worker_lost``: a task message is acknowledged only after the
  task returns, and requeued when the process running it dies (kill -9, OOM killer).
- prefetch 1: a worker holds no messages it is not working on.
- the attempt counter in the job store turns a study that keeps killing its worker into
  FAILED (a dead letter) instead of a crash loop.
"""

from __future__ import annotations

import logging
import secrets
from functools import partial
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from tumorlens.config import Settings
from tumorlens.errors import JobStoreUnavailableError
from tumorlens.listener.spool import Spool
from tumorlens.store.jobs import JobRef, JobStore
from tumorlens.worker.runner import WorkerContext, run_job

log = logging.getLogger(__name__)

ANALYSE_STUDY = "tumorlens.analyse_study"
QUEUE = "tumorlens"


def kombu_url(redis_url: str) -> str:
    """redis-py's ``unix:///path`` is kombu's ``redis+socket:///path``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def create_celery(settings: Settings, redis_url: str) -> Celery:
    """A Celery app bound to ``redis_url``, with the analysis task registered."""
    app = Celery("tumorlens", broker=kombu_url(redis_url), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    contexts: dict[str, WorkerContext] = {}

    def context() -> WorkerContext:
        # Built lazily in each pool process, i.e. after fork: a Redis connection (and later
        # an ONNX Runtime session) must not be shared across fork.
        if "ctx" not in contexts:
            contexts["ctx"] = WorkerContext(
                settings=settings,
                jobs=JobStore.from_url(redis_url),
                spool=Spool(settings.spool_dir, settings.disk_reserve_mb * 2**20),
            )
        return contexts["ctx"]

    def _reset_after_fork(**_: Any) -> None:
        contexts.clear()

    worker_process_init.connect(_reset_after_fork, weak=False)

    @app.task(  # type: ignore[untyped-decorator]
        name=ANALYSE_STUDY,
        acks_late=True,
        reject_on_worker_lost=True,
        # Redis away for a moment (failover, restart): retry, do not lose the study.
        autoretry_for=(JobStoreUnavailableError,),
        retry_backoff=True,
        retry_backoff_max=60,
        max_retries=30,
    )
    def analyse_study(study_instance_uid: str, version: int) -> str:
        ref = JobRef(study_instance_uid, int(version))
        return run_job(ref, context()).value

    return app


def celery_dispatcher(app: Celery) -> partial[None]:
    """A :data:`tumorlens.assembler.assembler.Dispatcher` that sends the analysis task."""
    return partial(_send, app)


def _send(app: Celery, ref: JobRef) -> None:
    app.send_task(
        ANALYSE_STUDY,
        args=[ref.study_instance_uid, ref.version],
        queue=QUEUE,
        # A readable, unique id: study UID (<= 64) + version fits Celery's id field.
        task_id=f"{ref.study_instance_uid}-v{ref.version}-{_nonce()}",
    )


def _nonce() -> str:
    return secrets.token_hex(4)
