"""One attempt of the worker against a real Redis, a real spool, the shipped models and a real
C-STORE peer (dcmtk storescp) receiving the results; no Celery."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.helpers.dcmqi import assert_seg_matches
from tests.helpers.dicom3tools import dciodvfy
from tests.helpers.dicom_peers import StoreSCP, free_port, run_storescp
from tests.helpers.synthetic import enhanced_mr, mr_instance
from tumorlens.config import Destination, load_settings
from tumorlens.dicomio.make_study import WrittenStudy
from tumorlens.identifiers import InstanceKey
from tumorlens.listener.spool import Spool
from tumorlens.sender.deliver import RetryPolicy, deliver
from tumorlens.store.jobs import JobRef, JobStore
from tumorlens.store.states import JobState
from tumorlens.worker.runner import WorkerContext, run_job

pytestmark = pytest.mark.integration

PIPELINE_STEPS = [
    "starting",
    "load-models",
    "select-series",
    "volumes",
    "align",
    "brain-mask",
    "segment",
    "classify-slices",
    "findings",
    "write-objects",
    "outbox",
]
SEG, SR, PDF = (
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.104.1",
)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StoreSCP]:
    with run_storescp(tmp_path / "received", "RESULTS") as server:
        yield server


def context(tmp_path: Path, jobs: JobStore, port: int) -> WorkerContext:
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        destinations=(Destination("RESULTS", "127.0.0.1", port),),
    )
    return WorkerContext(
        settings=settings,
        jobs=jobs,
        spool=Spool(settings.spool_dir),
        retry_policy=RetryPolicy(attempts=2, first_delay=0.1),
    )


@pytest.fixture
def ctx(tmp_path: Path, jobs: JobStore, scp: StoreSCP) -> WorkerContext:
    return context(tmp_path, jobs, scp.port)


def spool(ctx: WorkerContext, paths: list[Path]) -> JobRef:
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = InstanceKey(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        ctx.spool.store(key, path.read_bytes())
        ctx.jobs.record_instance(key, "TEST", "127.0.0.1")
    (ref,) = ctx.jobs.claim_stable(0)
    return ref


def received(scp: StoreSCP) -> dict[str, pydicom.Dataset]:
    """What the results peer holds, by SOP Class UID (one object each expected)."""
    out = {}
    for path in scp.received():
        ds = pydicom.dcmread(path)
        out[str(ds.SOPClassUID)] = ds
    return out


def test_the_real_case_is_analysed_and_its_results_delivered(
    ctx: WorkerContext, tcga_dicom: WrittenStudy, scp: StoreSCP
) -> None:
    ref = spool(ctx, tcga_dicom.paths)
    assert run_job(ref, ctx) is JobState.DONE
    job = ctx.jobs.get(ref.study_instance_uid)
    running = [e.step for e in job.timeline if e.state is JobState.RUNNING]
    assert running == PIPELINE_STEPS
    assert [e.step for e in job.timeline if e.state is JobState.SENDING] == ["deliver"]
    details = job.details
    assert details["sequences_used"] == ["t1", "t1c", "t2", "flair"]
    assert details["sequences_missing"] == []
    chosen = details["series_selection"]["chosen"]
    by_uid = {s.series_instance_uid: s.sequence for s in tcga_dicom.series}
    assert {seq: by_uid[c["series_instance_uid"]] for seq, c in chosen.items()} == {
        "t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "flair"
    }  # fmt: skip
    assert 1200 < details["brain_mask"]["volume_ml"] < 2100
    assert set(details["timings_s"]) == set(PIPELINE_STEPS[2:-1])
    assert "research use" in details["intended_use"].lower()
    # Results went to the peer, in the source study, one object per kind.
    objects = received(scp)
    kinds = {o["kind"] for o in details["objects"]}
    assert {"SR", "PDF"} <= kinds
    assert (SEG in objects) == ("SEG" in kinds)
    assert {SR, PDF} <= set(objects)
    for ds in objects.values():
        assert ds.StudyInstanceUID == ref.study_instance_uid
        assert ds.PatientID == "TCGA-FG-6692"
        assert "research" in str(ds.SeriesDescription).lower()
    assert details["delivered"] == {f"RESULTS@127.0.0.1:{scp.port}": len(details["objects"])}
    # The outbox keeps what was sent, as files named by their SOP Instance UID.
    folder = ctx.settings.outbox_dir / ref.study_instance_uid / "v1"
    assert {p.stem for p in folder.glob("*.dcm")} == {
        o["sop_instance_uid"] for o in details["objects"]
    }
    assert {p.name for p in folder.glob("*.nii.gz")} == {"labels.nii.gz", "brain_mask.nii.gz"}


def test_a_rerun_sends_the_same_objects_again(
    ctx: WorkerContext, tcga_dicom: WrittenStudy, scp: StoreSCP
) -> None:
    ref = spool(ctx, tcga_dicom.paths)
    assert run_job(ref, ctx) is JobState.DONE
    first = {o["sop_instance_uid"] for o in ctx.jobs.get(ref.study_instance_uid).details["objects"]}
    ctx.jobs.transition(ref, JobState.QUEUED, reason="operator retry")
    assert run_job(ref, ctx) is JobState.DONE
    again = {o["sop_instance_uid"] for o in ctx.jobs.get(ref.study_instance_uid).details["objects"]}
    assert again == first  # deterministic UIDs: the PACS replaces, it does not duplicate
    # ... and sent again: the second run delivered every object (storescp files them by SOP
    # Instance UID, so the peer holds one copy of each).
    details = ctx.jobs.get(ref.study_instance_uid).details
    assert details["delivered"] == {f"RESULTS@127.0.0.1:{scp.port}": len(first)}
    assert len(scp.received()) == len(first)


def test_a_missing_sequence_is_reported_and_the_rest_analysed(
    ctx: WorkerContext, tcga_dicom: WrittenStudy
) -> None:
    paths = [p for s in tcga_dicom.series if s.sequence in ("t1c", "flair") for p in s.paths]
    ref = spool(ctx, paths)
    assert run_job(ref, ctx) is JobState.DONE
    details = ctx.jobs.get(ref.study_instance_uid).details
    assert details["sequences_used"] == ["t1c", "flair"]
    assert details["sequences_missing"] == ["t1", "t2"]
    assert any("no T1, T2 series found" in note for note in details["notes"])


def test_a_study_without_usable_mr_series_fails_naming_what_was_found(
    ctx: WorkerContext, tmp_path: Path, scp: StoreSCP
) -> None:
    folder = tmp_path / "ct"
    folder.mkdir()
    paths = []
    for i in range(12):
        ds = mr_instance("1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.1", i)
        ds.Modality = "CT"
        ds.SeriesDescription = "HEAD CT"
        paths.append(folder / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    for i in range(3):
        ds = mr_instance("1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.2", i)
        ds.SeriesDescription = "3-plane localizer"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        paths.append(folder / f"loc{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    ref = spool(ctx, paths)
    assert run_job(ref, ctx) is JobState.FAILED
    job = ctx.jobs.get(ref.study_instance_uid)
    assert "no usable MR series" in job.error
    assert "CT series" in job.error and "localizer" in job.error
    assert job.timeline[-1].state is JobState.FAILED
    assert scp.received() == []  # nothing sent
    assert not (ctx.settings.outbox_dir / ref.study_instance_uid).exists()


def test_an_unreadable_study_ends_failed_with_the_reason(ctx: WorkerContext) -> None:
    key = InstanceKey("1.2.3", "1.2.3.1", "1.2.3.1.1")
    ctx.spool.store(key, b"\0" * 128 + b"DICM" + b"not a data set")
    ctx.jobs.record_instance(key, "TEST", "127.0.0.1")
    (ref,) = ctx.jobs.claim_stable(0)
    assert run_job(ref, ctx) is JobState.FAILED
    job = ctx.jobs.get("1.2.3")
    assert "unreadable" in job.error
    assert job.timeline[-1].state is JobState.FAILED


def test_undeliverable_results_fail_the_study_and_stay_in_the_outbox(
    tmp_path: Path, jobs: JobStore, tcga_dicom: WrittenStudy
) -> None:
    closed = free_port()  # nobody listens there
    ctx = context(tmp_path, jobs, closed)
    ref = spool(ctx, tcga_dicom.paths)
    assert run_job(ref, ctx) is JobState.FAILED
    job = ctx.jobs.get(ref.study_instance_uid)
    assert "not delivered after retries" in job.error
    assert f"RESULTS@127.0.0.1:{closed}" in job.error
    assert "tumorlens resend" in job.error
    assert [e.state for e in job.timeline][-2:] == [JobState.SENDING, JobState.FAILED]
    folder = ctx.settings.outbox_dir / ref.study_instance_uid / "v1"
    assert len(list(folder.glob("*.dcm"))) == len(job.details["objects"])
    # Once the destination is back, what the outbox holds is delivered as it is.
    with run_storescp(tmp_path / "late", "RESULTS") as late:
        ctx2 = context(tmp_path, jobs, late.port)
        batch = ctx2.outbox.load(ref.study_instance_uid)
        deliver(batch, ctx2.settings.destinations, "TUMORLENS", RetryPolicy(attempts=1))
        assert len(late.received()) == len(job.details["objects"])
    shutil.rmtree(folder.parent, ignore_errors=True)


def test_a_cancelled_job_is_not_run(ctx: WorkerContext, tcga_dicom: WrittenStudy) -> None:
    ref = spool(ctx, tcga_dicom.paths[:30])
    ctx.jobs.transition(ref, JobState.CANCELLED, reason="operator")
    assert run_job(ref, ctx) is JobState.CANCELLED
    assert ctx.jobs.get(ref.study_instance_uid).attempts == 0


def test_a_multi_frame_t1c_leaves_flair_as_the_reference(
    ctx: WorkerContext, tcga_dicom: WrittenStudy, tmp_path: Path, scp: StoreSCP
) -> None:
    """Enhanced MR T1c is analysed; the result objects reference the classic FLAIR series."""
    by_sequence = {s.sequence: s for s in tcga_dicom.series}
    enhanced = enhanced_mr(by_sequence["t1c"].paths, tmp_path / "t1c-enhanced.dcm")
    paths = [p for s in ("t1", "t2", "flair") for p in by_sequence[s].paths] + [enhanced]
    ref = spool(ctx, paths)
    assert run_job(ref, ctx) is JobState.DONE, ctx.jobs.get(ref.study_instance_uid).error
    details = ctx.jobs.get(ref.study_instance_uid).details
    assert details["sequences_used"] == ["t1", "t1c", "t2", "flair"]
    assert details["alignment"]["reference"] == "flair"
    sr = received(scp)[SR]
    evidence = {
        s.SeriesInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    }
    assert by_sequence["flair"].series_instance_uid in evidence


def test_an_all_enhanced_mr_study_gets_a_seg_on_the_frames(
    ctx: WorkerContext, tcga_dicom: WrittenStudy, tmp_path: Path, scp: StoreSCP
) -> None:
    """Every series one Enhanced MR instance (frames scrambled): the SEG references the T1c
    instance's frames; dciodvfy and dcmqi accept it; dcmqi's voxels are the label map."""
    paths = [
        enhanced_mr(s.paths, tmp_path / f"{s.sequence}-enhanced.dcm") for s in tcga_dicom.series
    ]
    ref = spool(ctx, paths)
    assert run_job(ref, ctx) is JobState.DONE, ctx.jobs.get(ref.study_instance_uid).error
    details = ctx.jobs.get(ref.study_instance_uid).details
    assert details["alignment"]["reference"] == "t1c"
    objects = received(scp)
    t1c = pydicom.dcmread(paths[[s.sequence for s in tcga_dicom.series].index("t1c")])
    pdf = objects[PDF]
    assert [i.ReferencedSOPInstanceUID for i in pdf.SourceInstanceSequence] == [t1c.SOPInstanceUID]
    # The shipped model labels something in this case (see the model card): a SEG must come.
    seg = objects[SEG]
    frames = {
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert frames and frames <= set(range(1, int(t1c.NumberOfFrames) + 1))
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == t1c.SOPInstanceUID
    (path,) = [p for p in scp.received() if pydicom.dcmread(p).SOPClassUID == SEG]
    assert [m for m in dciodvfy(path) if m.startswith("Error")] == []
    outbox = ctx.settings.outbox_dir / ref.study_instance_uid / "v1"
    labels = nib.load(str(outbox / "labels.nii.gz"))
    assert_seg_matches(
        path, np.asarray(labels.dataobj).astype(np.uint8), labels.affine, tmp_path / "dcmqi"
    )
