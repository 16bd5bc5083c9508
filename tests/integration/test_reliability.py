"""Reliability of ``tumorlens serve`` as a whole: concurrency, crashes and restarts.

Each test runs the real service (embedded Redis, listener, assembler, Celery worker) as a
subprocess and pushes with dcmtk's storescu or pynetdicom.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import dicom_peers
from tests.helpers.service import AE_TITLE, ServeProcess, dedup, states
from tumorlens.dicomio.make_study import WrittenStudy
from tumorlens.store.states import JobState

pytestmark = pytest.mark.integration

N = 104  # instances in the study


def storescu(
    port: int, folder: Path, calling: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    return dicom_peers.storescu(port, folder, called=AE_TITLE, calling=calling, timeout=300)


def push_ok(port: int, folder: Path) -> None:
    result = storescu(port, folder)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def study50(tcga_dicom: WrittenStudy) -> tuple[WrittenStudy, Path]:
    """A real study (TCGA-FG-6692 as 4 MR series x 26 instances): the whole analysis runs."""
    return tcga_dicom, tcga_dicom.out_dir


def test_ten_concurrent_pushes_of_one_study_three_times(
    serve: ServeProcess, study50: tuple[WrittenStudy, Path]
) -> None:
    study, folder = study50
    serve.start()

    def push_three_times(_: int) -> None:
        for _round in range(3):
            push_ok(serve.port, folder)

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(push_three_times, range(10)))
    job = serve.wait_for(study.study_instance_uid)
    assert job.state is JobState.DONE, job.error
    assert len(serve.spool_files(study.study_instance_uid)) == N
    assert (job.version, job.instances, job.series) == (1, N, 4)
    assert job.details["instances"] == N
    # exactly one completed run: one version, one attempt
    assert [j.version for j in serve.jobs.list_jobs()] == [1]
    assert states(job).count(JobState.DONE) == 1
    assert job.attempts == 1


def test_worker_killed_mid_run_is_rerun(
    serve: ServeProcess, study50: tuple[WrittenStudy, Path]
) -> None:
    study, folder = study50
    serve.env["TUMORLENS_DEBUG_TASK_PAUSE"] = "4"
    serve.start()
    push_ok(serve.port, folder)
    running = serve.wait_for(study.study_instance_uid, lambda j: j.step == "debug-pause")
    worker_pid = int(running.worker.rsplit(":", 1)[1])
    os.kill(worker_pid, signal.SIGKILL)
    job = serve.wait_for(study.study_instance_uid)
    assert job.state is JobState.DONE, job.error
    assert job.attempts == 2
    assert dedup(states(job)) == [
        JobState.RECEIVING,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SENDING,
        JobState.DONE,
    ]
    assert [e.reason for e in job.timeline if e.step == "starting"] == ["attempt 1", "attempt 2"]


def test_study_that_keeps_killing_its_worker_ends_failed(
    serve: ServeProcess, study50: tuple[WrittenStudy, Path]
) -> None:
    study, folder = study50
    serve.env["TUMORLENS_DEBUG_TASK_PAUSE"] = "4"
    serve.start()
    push_ok(serve.port, folder)
    uid = study.study_instance_uid
    for attempt in (1, 2):
        running = serve.wait_for(
            uid, lambda j, a=attempt: j.attempts == a and j.step == "debug-pause"
        )
        os.kill(int(running.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    job = serve.wait_for(uid)
    assert job.state is JobState.FAILED
    assert "2 attempts" in job.error and "dead letter" in job.error
    time.sleep(2)  # and it stays there: no crash loop
    assert serve.jobs.get(uid).state is JobState.FAILED


def test_restart_while_receiving_loses_nothing(
    serve: ServeProcess, tcga_dicom: WrittenStudy, tmp_path: Path
) -> None:
    study = tcga_dicom
    first_half = tmp_path / "first"
    second_half = tmp_path / "second"
    for i, path in enumerate(study.paths):
        target = (first_half if i % 2 == 0 else second_half) / f"{path.parent.name}_{path.name}"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(path.read_bytes())
    # Long enough to span the restart: the quiet timer counts from the last arrival.
    serve.env["TUMORLENS_STABLE_AGE"] = "20"
    serve.start()
    push_ok(serve.port, first_half)
    uid = study.study_instance_uid
    assert serve.jobs.get(uid).state is JobState.RECEIVING
    assert serve.stop() == 0  # graceful (SIGTERM) while RECEIVING
    serve.start()
    job = serve.jobs.get(uid)
    assert (job.state, job.instances) == (JobState.RECEIVING, N // 2)
    push_ok(serve.port, second_half)
    job = serve.wait_for(uid)
    assert job.state is JobState.DONE, job.error
    assert (job.version, job.instances, job.series) == (1, N, 4)
    assert len(serve.spool_files(uid)) == N


def test_hard_kill_while_receiving_recovers_from_the_spool(
    serve: ServeProcess, study50: tuple[WrittenStudy, Path]
) -> None:
    study, folder = study50
    serve.env["TUMORLENS_STABLE_AGE"] = "30"
    serve.start()
    push_ok(serve.port, folder)
    uid = study.study_instance_uid
    # SIGKILL: no shutdown code runs; children get SIGTERM from the kernel (PDEATHSIG).
    serve.stop(sig=signal.SIGKILL)
    # Lose the job store's record of some instances, as a power cut within Redis's
    # one-second append-only fsync window could.
    time.sleep(1)
    serve.env["TUMORLENS_STABLE_AGE"] = "2"
    serve.start()
    serve.jobs._r.srem(f"tl:study:{uid}:instances", *[p.stem for p in serve.spool_files(uid)[:7]])
    serve.stop()
    serve.start()  # start-up reconciles the spool with the job store
    job = serve.wait_for(uid)
    assert job.state is JobState.DONE, job.error
    assert job.instances == N
    assert len(serve.spool_files(uid)) == N
    assert "recovered 7 instances" in serve.log()


def test_hard_kill_while_running_resumes_after_restart(
    serve: ServeProcess, study50: tuple[WrittenStudy, Path]
) -> None:
    study, folder = study50
    serve.env["TUMORLENS_DEBUG_TASK_PAUSE"] = "5"
    serve.start()
    push_ok(serve.port, folder)
    uid = study.study_instance_uid
    serve.wait_for(uid, lambda j: j.step == "debug-pause")
    serve.stop(sig=signal.SIGKILL)  # service, worker and Redis all go down mid-run
    serve.env["TUMORLENS_DEBUG_TASK_PAUSE"] = "0"
    serve.start()
    job = serve.wait_for(uid, timeout=90)
    assert job.state is JobState.DONE, job.error
    assert job.attempts == 2
    assert "requeued 1 task(s)" in serve.log()
