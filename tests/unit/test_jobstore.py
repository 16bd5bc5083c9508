"""The job store against a real Redis (the embedded redis-server)."""

import threading

import pytest

from tumorlens.errors import InvalidTransitionError, StudyNotFoundError
from tumorlens.identifiers import InstanceKey
from tumorlens.store.jobs import AttemptDecision, JobRef, JobStore
from tumorlens.store.states import ALLOWED_FROM, JobState, is_allowed

STUDY = "1.2.826.0.1.1"


def record(jobs: JobStore, sop: str, series: str = "1.2.1", now: float = 100.0) -> int:
    return jobs.record_instance(
        InstanceKey(STUDY, series, sop), "ORTHANC", "127.0.0.1", now
    ).version


def test_instances_are_counted_once(jobs: JobStore) -> None:
    for sop in ("1.1", "1.2", "1.1", "1.3", "1.2"):
        record(jobs, sop)
    record(jobs, "1.4", series="1.2.2")
    job = jobs.get(STUDY)
    assert (job.instances, job.series, job.version, job.state) == (4, 2, 1, JobState.RECEIVING)
    assert job.calling_aet == "ORTHANC"
    assert [e.state for e in job.timeline] == [JobState.RECEIVING]


def test_quiet_study_is_claimed_exactly_once_by_racing_assemblers(jobs: JobStore) -> None:
    record(jobs, "1.1", now=100.0)
    assert jobs.claim_stable(stable_age=30, now=120.0) == []  # not quiet long enough
    claims: list[JobRef] = []
    barrier = threading.Barrier(6)

    def claim() -> None:
        barrier.wait()
        claims.extend(jobs.claim_stable(stable_age=30, now=131.0))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert claims == [JobRef(STUDY, 1)]
    assert jobs.get(STUDY).state is JobState.QUEUED


def test_new_instances_after_a_run_start_a_new_version(jobs: JobStore) -> None:
    record(jobs, "1.1")
    (ref,) = jobs.claim_stable(0, now=200.0)
    assert jobs.begin_attempt(ref, 2, "w:1") is AttemptDecision.RUN
    jobs.transition(ref, JobState.DONE)
    assert record(jobs, "1.1") == 1  # a duplicate changes nothing
    assert jobs.get(STUDY).state is JobState.DONE
    assert record(jobs, "1.2", now=300.0) == 2
    job = jobs.get(STUDY)
    assert (job.version, job.state, job.instances, job.new_instances) == (
        2,
        JobState.RECEIVING,
        2,
        1,
    )
    assert jobs.get(STUDY, 1).state is JobState.DONE


def test_transitions_are_checked(jobs: JobStore) -> None:
    record(jobs, "1.1")
    ref = JobRef(STUDY, 1)
    with pytest.raises(InvalidTransitionError, match="RECEIVING -> DONE"):
        jobs.transition(ref, JobState.DONE)
    with pytest.raises(StudyNotFoundError):
        jobs.transition(JobRef(STUDY, 9), JobState.QUEUED)
    jobs.transition(ref, JobState.CANCELLED, reason="operator")
    assert jobs.get(STUDY).state is JobState.CANCELLED
    assert jobs.receiving_studies() == []


def test_timeline_records_every_step(jobs: JobStore) -> None:
    record(jobs, "1.1")
    (ref,) = jobs.claim_stable(0, now=500.0)
    jobs.begin_attempt(ref, 2, "w:1")
    jobs.set_step(ref, JobState.RUNNING, "inspect-series")
    jobs.transition(ref, JobState.FAILED, reason="no usable series")
    job = jobs.get(STUDY)
    assert [(e.state, e.step) for e in job.timeline] == [
        (JobState.RECEIVING, ""),
        (JobState.QUEUED, ""),
        (JobState.RUNNING, "starting"),
        (JobState.RUNNING, "inspect-series"),
        (JobState.FAILED, ""),
    ]
    assert job.error == "no usable series"
    assert job.timeline[-1].reason == "no usable series"


def test_crashing_attempts_end_in_the_dead_letter_state(jobs: JobStore) -> None:
    record(jobs, "1.1")
    (ref,) = jobs.claim_stable(0, now=600.0)
    assert jobs.begin_attempt(ref, 2, "w:1") is AttemptDecision.RUN
    # the worker died; the redelivered message starts attempt 2
    assert jobs.begin_attempt(ref, 2, "w:2") is AttemptDecision.RUN
    assert jobs.begin_attempt(ref, 2, "w:3") is AttemptDecision.DEAD_LETTER
    job = jobs.get(STUDY)
    assert job.state is JobState.FAILED
    assert "2 attempts" in job.error
    # a stale duplicate message for a finished job is skipped
    assert jobs.begin_attempt(ref, 2, "w:4") is AttemptDecision.SKIP


def test_retry_requeues_and_resets_attempts(jobs: JobStore) -> None:
    record(jobs, "1.1")
    (ref,) = jobs.claim_stable(0, now=700.0)
    jobs.dispatched(ref)
    jobs.begin_attempt(ref, 2, "w:1")
    jobs.transition(ref, JobState.FAILED, reason="boom")
    jobs.transition(ref, JobState.QUEUED, requeue=True)
    job = jobs.get(STUDY)
    assert (job.state, job.attempts, job.error) == (JobState.QUEUED, 0, "")
    assert jobs.stale_dispatches(grace=0) == [ref]
    assert jobs.stale_dispatches(grace=60) == []  # taken: not handed out twice


def test_orphaned_claim_is_redispatched_once(jobs: JobStore) -> None:
    record(jobs, "1.1")
    (ref,) = jobs.claim_stable(0, now=800.0)
    # the claiming assembler died before sending: another one picks it up after the grace
    assert jobs.stale_dispatches(grace=30, now=810.0) == []
    assert jobs.stale_dispatches(grace=30, now=840.0) == [ref]
    assert jobs.stale_dispatches(grace=30, now=841.0) == []


def test_transition_table_is_consistent() -> None:
    assert is_allowed(JobState.RECEIVING, JobState.QUEUED)
    assert not is_allowed(JobState.DONE, JobState.RUNNING)
    for target, sources in ALLOWED_FROM.items():
        assert target in JobState
        assert all(s in JobState for s in sources)
