"""One attempt of the worker against a real Redis and a real spool (no Celery)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.helpers.synthetic import write_study
from tumorlens.config import load_settings
from tumorlens.identifiers import InstanceKey
from tumorlens.listener.spool import Spool
from tumorlens.store.jobs import JobRef, JobStore
from tumorlens.store.states import JobState
from tumorlens.worker.runner import WorkerContext, run_job


@pytest.fixture
def ctx(tmp_path: Path, jobs: JobStore) -> WorkerContext:
    settings = load_settings(environ={}, data_dir=tmp_path / "data")
    return WorkerContext(settings=settings, jobs=jobs, spool=Spool(settings.spool_dir))


def spool_study(ctx: WorkerContext, tmp_path: Path, n: int = 6) -> JobRef:
    study = write_study(tmp_path / "in", n, series=2)
    for path in study.paths:
        ds = pydicom.dcmread(path)
        key = InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        ctx.spool.store(key, path.read_bytes())
        ctx.jobs.record_instance(key, "TEST", "127.0.0.1")
    (ref,) = ctx.jobs.claim_stable(0)
    return ref


def test_a_readable_study_ends_done_with_its_geometry(ctx: WorkerContext, tmp_path: Path) -> None:
    ref = spool_study(ctx, tmp_path)
    assert run_job(ref, ctx) is JobState.DONE
    job = ctx.jobs.get(ref.study_instance_uid)
    assert job.details["series_count"] == 2
    series = job.details["series"][0]
    assert (series["instances"], series["rows"], series["columns"]) == (6, 64, 64)
    assert series["slice_spacing"] == pytest.approx(5.0)
    assert [e.step for e in job.timeline if e.state is JobState.RUNNING] == [
        "starting",
        "inspect-series",
    ]


def test_an_unreadable_study_ends_failed_with_the_reason(
    ctx: WorkerContext, tmp_path: Path
) -> None:
    key = InstanceKey("1.2.3", "1.2.3.1", "1.2.3.1.1")
    ctx.spool.store(key, b"\0" * 128 + b"DICM" + b"not a data set")
    ctx.jobs.record_instance(key, "TEST", "127.0.0.1")
    (ref,) = ctx.jobs.claim_stable(0)
    assert run_job(ref, ctx) is JobState.FAILED
    job = ctx.jobs.get("1.2.3")
    assert "no readable series" in job.error
    assert job.timeline[-1].state is JobState.FAILED


def test_a_cancelled_job_is_not_run(ctx: WorkerContext, tmp_path: Path) -> None:
    ref = spool_study(ctx, tmp_path)
    ctx.jobs.transition(ref, JobState.CANCELLED, reason="operator")
    assert run_job(ref, ctx) is JobState.CANCELLED
    assert ctx.jobs.get(ref.study_instance_uid).attempts == 0
