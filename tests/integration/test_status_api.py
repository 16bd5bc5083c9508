"""The status API over a real gRPC channel, against a real (embedded) Redis job store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from tumorlens import cli
from tumorlens.config import Settings
from tumorlens.errors import ConfigurationError
from tumorlens.identifiers import InstanceKey
from tumorlens.status.health import HealthProbe, default_probe
from tumorlens.status.server import StatusServer, start_status_server
from tumorlens.status.servicer import STATE_FROM_PROTO, STATE_TO_PROTO
from tumorlens.status.transport import is_local_address
from tumorlens.status.v1 import status_pb2 as pb
from tumorlens.status.v1 import status_pb2_grpc
from tumorlens.store.embedded_redis import EmbeddedRedis
from tumorlens.store.jobs import JobRef, JobStore
from tumorlens.store.states import JobState

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0  # fixed times make the timeline exact
FAILURE = "no usable series: no T1 post-contrast series found"
STUDY = "1.2.826.0.1.3680043.8.498.1"


@dataclass
class Api:
    redis: EmbeddedRedis
    jobs: JobStore
    server: StatusServer
    stub: status_pb2_grpc.StudyStatusStub
    address: str


@contextmanager
def running_api(root: Path) -> Iterator[Api]:
    settings = Settings(data_dir=root / "data", models_dir=root / "models", disk_reserve_mb=1)
    with EmbeddedRedis(settings.data_dir) as server:
        jobs = JobStore.from_url(server.url)
        status = start_status_server(
            settings,
            jobs,
            default_probe(settings, jobs),
            address="127.0.0.1:0",
            poll_interval=0.05,
        )
        channel = grpc.insecure_channel(status.address)
        stub = status_pb2_grpc.StudyStatusStub(channel)  # type: ignore[no-untyped-call]
        try:
            yield Api(server, jobs, status, stub, status.address)
        finally:
            channel.close()
            status.stop(grace=0).wait()


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running_api(tmp_path_factory.mktemp("status")) as api:
        yield api


@pytest.fixture
def api(shared_api: Api) -> Api:
    redis.Redis.from_url(shared_api.redis.url).flushdb()
    return shared_api


def receive(jobs: JobStore, study: str, instances: int, series: int = 1, at: float = T0) -> JobRef:
    """``instances`` new ones arrive, spread over ``series`` series, one a second from ``at``."""
    for i in range(instances):
        series_uid = f"{study}.{i % series + 1}"
        key = InstanceKey(study, series_uid, f"{series_uid}.{int(at)}{i + 1}")
        recorded = jobs.record_instance(key, "MODALITY", "10.0.0.7", now=at + i)
    return JobRef(study, recorded.version)


def failed_study(jobs: JobStore, study: str = STUDY) -> JobRef:
    """RECEIVING at T0 (3 instances, 2 series), QUEUED T0+10, RUNNING T0+11, FAILED T0+20."""
    ref = receive(jobs, study, instances=3, series=2)
    assert jobs.claim_stable(stable_age=0, now=T0 + 10) == [ref]
    jobs.begin_attempt(ref, max_attempts=2, worker="worker-1", now=T0 + 11)
    jobs.transition(ref, JobState.FAILED, reason=FAILURE, now=T0 + 20)
    return ref


def queued_study(jobs: JobStore, study: str, at: float = T0) -> JobRef:
    ref = receive(jobs, study, instances=1, at=at)
    assert jobs.claim_stable(stable_age=0, now=at + 5) == [ref]
    return ref


def done_study(jobs: JobStore, study: str, at: float = T0) -> JobRef:
    ref = queued_study(jobs, study, at)
    jobs.begin_attempt(ref, max_attempts=2, worker="worker-1", now=at + 6)
    jobs.transition(ref, JobState.DONE, now=at + 7)
    return ref


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code ``call`` fails with."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    code: grpc.StatusCode = info.value.code()
    return code


def seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


# --- mapping --------------------------------------------------------------------------------
def test_every_job_state_has_a_proto_state() -> None:
    assert set(STATE_TO_PROTO) == set(JobState)
    assert {STATE_FROM_PROTO[v] for v in STATE_TO_PROTO.values()} == set(JobState)
    for state, value in STATE_TO_PROTO.items():
        assert pb.JobState.Name(value) == f"JOB_STATE_{state.value}"


# --- GetStudy -------------------------------------------------------------------------------
def test_get_study_reports_counts_state_error_and_timeline(api: Api) -> None:
    ref = failed_study(api.jobs)
    api.jobs.set_details(ref, series_used=["1.2.3"], slices=24)

    study = api.stub.GetStudy(pb.GetStudyRequest(study_instance_uid=STUDY))

    assert study.study_instance_uid == STUDY
    assert study.version == 1
    assert study.state == pb.JOB_STATE_FAILED
    assert (study.instances, study.series, study.new_instances) == (3, 2, 3)
    assert (study.calling_ae_title, study.calling_host) == ("MODALITY", "10.0.0.7")
    assert study.attempts == 1
    assert study.worker == "worker-1"
    assert study.error == FAILURE
    assert seconds(study.created) == T0
    assert seconds(study.last_arrival) == T0 + 2
    assert seconds(study.updated) == T0 + 20
    assert json.loads(study.details_json) == {"series_used": ["1.2.3"], "slices": 24}
    assert [(e.state, e.step, seconds(e.time), e.reason) for e in study.timeline] == [
        (pb.JOB_STATE_RECEIVING, "", T0, ""),
        (pb.JOB_STATE_QUEUED, "", T0 + 10, ""),
        (pb.JOB_STATE_RUNNING, "starting", T0 + 11, "attempt 1"),
        (pb.JOB_STATE_FAILED, "", T0 + 20, FAILURE),
    ]
    # Version 1 named explicitly is the same job.
    assert api.stub.GetStudy(pb.GetStudyRequest(study_instance_uid=STUDY, version=1)) == study


def test_get_study_of_a_later_version(api: Api) -> None:
    done_study(api.jobs, STUDY)
    receive(api.jobs, STUDY, instances=2, at=T0 + 100)  # new instances: version 2
    current = api.stub.GetStudy(pb.GetStudyRequest(study_instance_uid=STUDY))
    assert (current.version, current.state) == (2, pb.JOB_STATE_RECEIVING)
    assert (current.instances, current.new_instances) == (3, 2)
    first = api.stub.GetStudy(pb.GetStudyRequest(study_instance_uid=STUDY, version=1))
    assert (first.version, first.state) == (1, pb.JOB_STATE_DONE)


def test_get_study_errors(api: Api) -> None:
    done_study(api.jobs, STUDY)

    def get(uid: str, version: int = 0) -> Callable[[], object]:
        return lambda: api.stub.GetStudy(
            pb.GetStudyRequest(study_instance_uid=uid, version=version)
        )

    assert code_of(get("1.2.3.4")) == grpc.StatusCode.NOT_FOUND
    assert code_of(get(STUDY, version=7)) == grpc.StatusCode.NOT_FOUND
    assert code_of(get("../../etc/passwd")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(get("")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(get("1." * 40 + "1")) == grpc.StatusCode.INVALID_ARGUMENT  # > 64 chars
    assert code_of(get(STUDY, version=-1)) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        api.stub.GetStudy(pb.GetStudyRequest(study_instance_uid="1.2.3.4"))
    assert "1.2.3.4" in info.value.details()


# --- RetryStudy / CancelStudy -----------------------------------------------------------------
def test_retry_of_a_failed_study_queues_it_for_dispatch(api: Api) -> None:
    ref = failed_study(api.jobs)

    study = api.stub.RetryStudy(
        pb.RetryStudyRequest(study_instance_uid=STUDY, reason="new model installed")
    )

    assert study.state == pb.JOB_STATE_QUEUED
    assert (study.attempts, study.error) == (0, "")
    last = study.timeline[-1]
    assert last.state == pb.JOB_STATE_QUEUED
    assert last.reason.startswith("retried by ")
    assert last.reason.endswith(": new model installed")
    assert api.stub.GetStudy(pb.GetStudyRequest(study_instance_uid=STUDY)) == study
    # It waits in the dispatch set that the assembler hands to Celery.
    assert api.jobs.stale_dispatches(grace=0) == [ref]


def test_retry_and_cancel_refuse_impossible_transitions(api: Api) -> None:
    done_study(api.jobs, STUDY)
    queued_study(api.jobs, "1.2.3.5")

    cancel_done = lambda: api.stub.CancelStudy(pb.CancelStudyRequest(study_instance_uid=STUDY))  # noqa: E731
    retry_queued = lambda: api.stub.RetryStudy(pb.RetryStudyRequest(study_instance_uid="1.2.3.5"))  # noqa: E731
    retry_unknown = lambda: api.stub.RetryStudy(pb.RetryStudyRequest(study_instance_uid="9.9"))  # noqa: E731

    assert code_of(cancel_done) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(retry_queued) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(retry_unknown) == grpc.StatusCode.NOT_FOUND
    assert api.jobs.get(STUDY).state == JobState.DONE  # unchanged


def test_cancel_of_a_queued_study(api: Api) -> None:
    queued_study(api.jobs, STUDY)
    study = api.stub.CancelStudy(
        pb.CancelStudyRequest(study_instance_uid=STUDY, reason="wrong patient")
    )
    assert study.state == pb.JOB_STATE_CANCELLED
    assert study.error.startswith("cancelled by ")
    assert study.error.endswith(": wrong patient")
    assert study.timeline[-1].state == pb.JOB_STATE_CANCELLED


# --- ListStudies ----------------------------------------------------------------------------
def test_list_studies_newest_first_and_filtered_by_state(api: Api) -> None:
    failed_study(api.jobs, "1.2.3.1")
    queued_study(api.jobs, "1.2.3.2", at=T0 + 100)
    done_study(api.jobs, "1.2.3.3", at=T0 + 200)

    def uids(request: pb.ListStudiesRequest) -> list[str]:
        return [s.study_instance_uid for s in api.stub.ListStudies(request).studies]

    assert uids(pb.ListStudiesRequest()) == ["1.2.3.3", "1.2.3.2", "1.2.3.1"]
    assert uids(pb.ListStudiesRequest(limit=2)) == ["1.2.3.3", "1.2.3.2"]
    assert uids(pb.ListStudiesRequest(states=[pb.JOB_STATE_FAILED])) == ["1.2.3.1"]
    both = pb.ListStudiesRequest(states=[pb.JOB_STATE_FAILED, pb.JOB_STATE_QUEUED])
    assert uids(both) == ["1.2.3.2", "1.2.3.1"]
    assert uids(pb.ListStudiesRequest(states=[pb.JOB_STATE_RUNNING])) == []

    bad_limit = lambda: api.stub.ListStudies(pb.ListStudiesRequest(limit=-1))  # noqa: E731
    unspecified = lambda: api.stub.ListStudies(  # noqa: E731
        pb.ListStudiesRequest(states=[pb.JOB_STATE_UNSPECIFIED])
    )
    assert code_of(bad_limit) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(unspecified) == grpc.StatusCode.INVALID_ARGUMENT


# --- WatchStudy -----------------------------------------------------------------------------
def test_watch_streams_changes_until_a_terminal_state(api: Api) -> None:
    ref = queued_study(api.jobs, STUDY)
    seen_queued, seen_running = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            assert seen_queued.wait(10)
            api.jobs.begin_attempt(ref, max_attempts=2, worker="worker-1")
            assert seen_running.wait(10)
            api.jobs.transition(ref, JobState.DONE)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    states = []
    try:
        call = api.stub.WatchStudy(pb.WatchStudyRequest(study_instance_uid=STUDY), timeout=20)
        for update in call:
            states.append(update.state)
            if update.state == pb.JOB_STATE_QUEUED:
                seen_queued.set()
            if update.state == pb.JOB_STATE_RUNNING:
                seen_running.set()
    finally:
        seen_queued.set()
        seen_running.set()
        thread.join(10)
    assert not errors
    # The stream ended by itself at DONE, each state reported once.
    assert states == [pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_DONE]
    assert call.code() == grpc.StatusCode.OK


def test_watch_of_a_finished_study_sends_it_once(api: Api) -> None:
    done_study(api.jobs, STUDY)
    updates = list(api.stub.WatchStudy(pb.WatchStudyRequest(study_instance_uid=STUDY)))
    assert [u.state for u in updates] == [pb.JOB_STATE_DONE]
    unknown = lambda: list(api.stub.WatchStudy(pb.WatchStudyRequest(study_instance_uid="9.9")))  # noqa: E731
    assert code_of(unknown) == grpc.StatusCode.NOT_FOUND


def test_a_cancelled_watch_frees_its_server_thread(api: Api) -> None:
    queued_study(api.jobs, STUDY)
    call = api.stub.WatchStudy(pb.WatchStudyRequest(study_instance_uid=STUDY))
    assert next(call).state == pb.JOB_STATE_QUEUED
    assert api.server.servicer.active_watches == 1
    call.cancel()
    deadline = time.monotonic() + 5
    while api.server.servicer.active_watches and time.monotonic() < deadline:
        time.sleep(0.02)
    assert api.server.servicer.active_watches == 0


# --- Health ---------------------------------------------------------------------------------
def test_health_tells_the_truth_when_redis_stops(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        done_study(api.jobs, STUDY)
        health = api.stub.Health(pb.HealthRequest())
        components = {c.name: c for c in health.components}
        assert health.serving
        assert set(components) == {"job_store", "broker", "spool", "models"}
        assert components["job_store"].ok and components["job_store"].critical
        assert components["broker"].ok
        assert components["spool"].ok, components["spool"].detail
        # No models yet: reported, but not (yet) a reason to stop serving.
        assert not components["models"].ok
        assert not components["models"].critical
        assert components["models"].detail == "no models installed"

        api.redis.stop()

        health = api.stub.Health(pb.HealthRequest())
        components = {c.name: c for c in health.components}
        assert not health.serving
        assert not components["job_store"].ok
        assert "unreachable" in components["job_store"].detail
        assert not components["broker"].ok
        get = lambda: api.stub.GetStudy(pb.GetStudyRequest(study_instance_uid=STUDY))  # noqa: E731
        assert code_of(get) == grpc.StatusCode.UNAVAILABLE


def test_health_reports_installed_models(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    settings.models_dir.mkdir()
    (settings.models_dir / "tumour_seg.onnx").write_bytes(b"onnx")
    with EmbeddedRedis(settings.data_dir) as server:
        report = default_probe(settings, JobStore.from_url(server.url)).check()
    models = {c.name: c for c in report.components}["models"]
    assert models.ok
    assert "tumour_seg.onnx" in models.detail


def test_health_probe_bounds_a_hung_check_and_ignores_non_critical_ones() -> None:
    release = threading.Event()

    def hangs() -> tuple[bool, str]:
        release.wait(10)
        return True, "late"

    def raises() -> tuple[bool, str]:
        raise OSError("disk on fire")

    probe = HealthProbe(timeout=0.2)
    probe.add("fine", lambda: (True, "fine"))
    probe.add("optional", raises, critical=False)
    assert probe.check().serving
    probe.add("hung", hangs)
    started = time.monotonic()
    report = probe.check()
    release.set()
    assert time.monotonic() - started < 2
    assert not report.serving
    assert [(c.name, c.ok, c.detail) for c in report.components] == [
        ("fine", True, "fine"),
        ("optional", False, "OSError: disk on fire"),
        ("hung", False, "no answer within 0.2 s"),
    ]


# --- server and transport -------------------------------------------------------------------
def test_plaintext_is_refused_off_loopback(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    jobs = JobStore.from_url("unix:///nonexistent.sock")  # never contacted
    with pytest.raises(ConfigurationError, match="TLS"):
        start_status_server(settings, jobs, address="0.0.0.0:0")
    assert is_local_address("127.0.0.1:50051")
    assert is_local_address("[::1]:50051")
    assert is_local_address("localhost:1")
    assert is_local_address("unix:/run/tumorlens.sock")
    assert not is_local_address("0.0.0.0:50051")
    assert not is_local_address("pacs-ai.example.org:50051")


# --- the CLI, end to end ----------------------------------------------------------------------
def run_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("status", "retry", "cancel"))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_status_cli(
    api: Api, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    failed_study(api.jobs)
    done_study(api.jobs, "1.2.3.3", at=T0 + 200)
    address = ["--address", api.address]

    code, out, _ = run_cli(["status", *address], capsys, monkeypatch)
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "STUDY", "INSTANCE", "UID", "V", "STATE", "STEP", "INST", "SERIES", "AGE", "ERROR"
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["1.2.3.3", "1", "DONE", "-", "1", "1"]
    assert lines[2].split()[:6] == [STUDY, "1", "FAILED", "-", "3", "2"]
    assert FAILURE in lines[2]

    code, out, _ = run_cli(["status", "--state", "failed", *address], capsys, monkeypatch)
    assert code == 0
    assert len(out.splitlines()) == 2
    assert STUDY in out

    code, out, _ = run_cli(["status", STUDY, *address], capsys, monkeypatch)
    assert code == 0
    assert "FAILED" in out and FAILURE in out and "MODALITY at 10.0.0.7" in out
    timeline = out.split("Timeline\n", 1)[1].splitlines()
    assert [line.split()[3] for line in timeline] == ["RECEIVING", "QUEUED", "RUNNING", "FAILED"]
    assert "+11.0s" in timeline[2] and "starting" in timeline[2] and "attempt 1" in timeline[2]

    code, out, _ = run_cli(["status", STUDY, "--json", *address], capsys, monkeypatch)
    data = json.loads(out)
    assert (code, data["state"], data["error"]) == (0, "JOB_STATE_FAILED", FAILURE)
    assert len(data["timeline"]) == 4

    code, out, _ = run_cli(["retry", STUDY, "--reason", "fixed", *address], capsys, monkeypatch)
    assert code == 0 and "QUEUED" in out

    code, _, err = run_cli(["cancel", "1.2.3.3", *address], capsys, monkeypatch)
    assert code == 2
    assert "FAILED_PRECONDITION" in err and "DONE -> CANCELLED" in err

    code, out, _ = run_cli(["status", "1.2.3.3", "--watch", *address], capsys, monkeypatch)
    assert code == 0
    assert out.strip().endswith("DONE")

    code, out, _ = run_cli(["status", "--health", *address], capsys, monkeypatch)
    assert code == 0
    assert out.startswith("serving")
    assert "job_store" in out and "no models installed" in out


def test_status_cli_errors(
    api: Api, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(["status", "1.2.3.4", "--address", api.address], capsys, monkeypatch)
    assert code == 2
    assert "NOT_FOUND" in err and "1.2.3.4" in err

    code, _, err = run_cli(["status", "--watch", "--address", api.address], capsys, monkeypatch)
    assert code == 2 and "--watch needs a STUDY_UID" in err

    # Nothing listens on port 1 of loopback.
    code, _, err = run_cli(["status", "--address", "127.0.0.1:1"], capsys, monkeypatch)
    assert code == 2
    assert "cannot reach the status API at 127.0.0.1:1" in err
