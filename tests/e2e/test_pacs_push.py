"""Real PACS peers push studies into ``tumorlens serve``: dcmtk's storescu and Orthanc.

The job must reach DONE with exactly the instance and series counts that were sent.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from tests.helpers import dicom_peers
from tests.helpers.orthanc import Orthanc, available
from tests.helpers.pictures import (
    artifacts_dir,
    fetch_instance,
    reference_series,
    render_pdf_page,
    render_seg_overlay,
)
from tests.helpers.service import AE_TITLE, ServeProcess
from tests.helpers.volumes import synthetic_head
from tumorlens.dicomio.make_study import WrittenStudy, make_study
from tumorlens.store.jobs import Job
from tumorlens.store.states import JobState

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def brats_grid_study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """4 series x 155 slices, as a BraTS-sized study would arrive."""
    root = tmp_path_factory.mktemp("brats-grid")
    volumes = synthetic_head(root / "nifti")
    return make_study(volumes, root / "dicom", patient_id="SYN4X155", seed=4155)


@pytest.fixture
def tcga_study(tcga_case: Path, tmp_path: Path) -> WrittenStudy:
    volumes = {s: tcga_case / f"{s}.nii.gz" for s in ("t1", "t1c", "t2", "flair")}
    return make_study(volumes, tmp_path / "tcga", patient_id="TCGA-FG-6692", seed=6692)


def storescu(port: int, folder: Path) -> None:
    result = dicom_peers.storescu(port, folder, called=AE_TITLE)
    assert result.returncode == 0, result.stderr


def assert_complete(serve: ServeProcess, study: WrittenStudy, calling_aet: str) -> Job:
    """Every instance arrived once, the study was analysed with all four sequences chosen
    from the right series, and its results were delivered."""
    uid = study.study_instance_uid
    job = serve.wait_for(uid, timeout=300)
    sent = sum(len(s.paths) for s in study.series)
    assert job.state is JobState.DONE, job.error
    assert (job.instances, job.series, job.version) == (sent, len(study.series), 1)
    assert job.calling_aet == calling_aet
    assert job.details["instances"] == sent
    decisions = {d["series_instance_uid"]: d for d in job.details["series_selection"]["series"]}
    for series in study.series:
        assert decisions[series.series_instance_uid]["slices"] == len(series.paths)
        assert decisions[series.series_instance_uid]["chosen_as"] == series.sequence
    assert job.details["sequences_used"] == ["t1", "t1c", "t2", "flair"]
    assert len(serve.spool_files(uid)) == sent
    assert sum(job.details["delivered"].values()) == len(job.details["objects"])
    return job


def test_storescu_pushes_a_4x155_study(serve: ServeProcess, brats_grid_study: WrittenStudy) -> None:
    assert [len(s.paths) for s in brats_grid_study.series] == [155] * 4
    serve.start()
    storescu(serve.port, brats_grid_study.out_dir)
    assert_complete(serve, brats_grid_study, "STORESCU")


def test_storescu_pushes_the_real_case(serve: ServeProcess, tcga_study: WrittenStudy) -> None:
    serve.start()
    storescu(serve.port, tcga_study.out_dir)
    job = assert_complete(serve, tcga_study, "STORESCU")
    for decision in job.details["series_selection"]["series"]:
        assert decision["slices"] == 26


@pytest.fixture
def phantom_study(tmp_path: Path) -> WrittenStudy:
    """A synthetic high-grade glioma phantom (full head, 2 mm) as a DICOM MR study."""
    from tumorlens_train.phantoms import PhantomConfig, generate_case
    from tumorlens_train.phantoms.writer import write_case

    phantom = generate_case(20261123, "hgg", PhantomConfig(thick_slice_prob=0.0))
    write_case(phantom, tmp_path / "phantom", "phantom_hgg")
    folder = tmp_path / "phantom" / "phantom_hgg"
    names = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
    volumes = {s: folder / f"phantom_hgg_{f}.nii.gz" for s, f in names.items()}
    return make_study(volumes, tmp_path / "phantom-dicom", patient_id="PHANTOM-HGG", seed=1123)


@contextmanager
def orthanc_round_trip(
    serve: ServeProcess, study: WrittenStudy, tmp_path: Path
) -> Iterator[tuple[Orthanc, str, Job]]:
    """Orthanc stores the study and pushes it; tumorlens sends the results back to it."""
    orthanc = Orthanc(tmp_path / "orthanc", {"tumorlens": (AE_TITLE, "127.0.0.1", serve.port)})
    serve.env["TUMORLENS_ALLOWED_CALLING_AETS"] = "ORTHANC"
    # No 'destinations': results go back to the sender, found by its AE title in 'peers'.
    serve.env["TUMORLENS_DESTINATIONS"] = ""
    serve.env["TUMORLENS_PEERS"] = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    serve.start()
    orthanc.start()
    try:
        (study_id,) = orthanc.upload(study.paths)
        orthanc.echo("tumorlens")
        orthanc.push_study("tumorlens", study_id)
        yield orthanc, study_id, assert_complete(serve, study, "ORTHANC")
    finally:
        orthanc.stop()
        shutil.rmtree(tmp_path / "orthanc", ignore_errors=True)


def result_series(orthanc: Orthanc, study_id: str) -> dict[str, dict[str, Any]]:
    """The study's series in Orthanc by modality, for those tumorlens adds (SEG, SR, DOC)."""
    series = orthanc.get(f"/studies/{study_id}/series")
    return {s["MainDicomTags"]["Modality"]: s for s in series if s["MainDicomTags"].get(
        "Modality") in ("SEG", "SR", "DOC")}  # fmt: skip


def assert_results_in_orthanc(orthanc: Orthanc, study_id: str, job: Job) -> dict[str, Any]:
    kinds = {o["kind"] for o in job.details["objects"]}
    expected = {"SEG", "SR", "DOC"} if "SEG" in kinds else {"SR", "DOC"}
    found = result_series(orthanc, study_id)
    assert set(found) == expected
    for modality, series in found.items():
        assert len(series["Instances"]) == 1, modality
        tags = orthanc.get(f"/instances/{series['Instances'][0]}/tags?simplify")
        assert tags["StudyInstanceUID"] == job.study_instance_uid
        assert "research" in tags["SeriesDescription"].lower()
        assert tags["Manufacturer"] == "tumorlens"
    # The same study, not a new one: Orthanc holds one study for this patient.
    assert len(orthanc.get("/studies")) == 1
    return found


def fetch(orthanc: Orthanc, series: dict[str, Any]) -> pydicom.Dataset:
    data = orthanc.request_bytes("GET", f"/instances/{series['Instances'][0]}/file")
    return pydicom.dcmread(io.BytesIO(data))


def draw_results(orthanc: Orthanc, study_id: str, found: dict[str, Any], prefix: Path) -> int:
    """From what Orthanc holds: the PDF's first page and the SEG over its source image, as
    ``<prefix>_pdf_page1.png`` and ``<prefix>_seg_overlay.png``; the pixels coloured."""
    pdf = fetch(orthanc, found["DOC"])
    render_pdf_page(bytes(pdf.EncapsulatedDocument), Path(f"{prefix}_pdf_page1.png"))
    if "SEG" not in found:
        return 0
    seg = fetch(orthanc, found["SEG"])
    source_series = orthanc.get(f"/series/{reference_series(orthanc, study_id, seg)}")
    by_uid = {
        str(ds.SOPInstanceUID): ds
        for ds in (fetch_instance(orthanc, i) for i in source_series["Instances"])
    }
    return render_seg_overlay(seg, by_uid, Path(f"{prefix}_seg_overlay.png"))


@pytest.mark.skipif(not available(), reason="Orthanc (Debian package orthanc) not installed")
def test_orthanc_gets_seg_sr_and_pdf_back_for_the_real_case(
    serve: ServeProcess, tcga_study: WrittenStudy, tmp_path: Path
) -> None:
    with orthanc_round_trip(serve, tcga_study, tmp_path) as (orthanc, study_id, job):
        found = assert_results_in_orthanc(orthanc, study_id, job)
        assert bytes(fetch(orthanc, found["DOC"]).EncapsulatedDocument).startswith(b"%PDF")
        drawn = draw_results(orthanc, study_id, found, artifacts_dir(tmp_path) / "tcga")
        assert "SEG" in found and drawn > 0  # the overlay covered pixels of the source


@pytest.mark.skipif(not available(), reason="Orthanc (Debian package orthanc) not installed")
def test_orthanc_gets_results_back_for_a_phantom_study(
    serve: ServeProcess, phantom_study: WrittenStudy, tmp_path: Path
) -> None:
    with orthanc_round_trip(serve, phantom_study, tmp_path) as (orthanc, study_id, job):
        found = assert_results_in_orthanc(orthanc, study_id, job)
        sr = hd.sr.Comprehensive3DSR.from_dataset(fetch(orthanc, found["SR"]))
        report = hd.sr.MeasurementReport.from_sequence([sr])
        volumes = job.details["volumes_ml"]
        assert volumes["whole_tumour"] > 0
        present = [k for k in ("core", "oedema", "enhancing") if volumes[k] > 0]
        assert len(report.get_volumetric_roi_measurement_groups()) == len(present)
        assert draw_results(orthanc, study_id, found, artifacts_dir(tmp_path) / "phantom") > 0


@pytest.mark.skipif(not available(), reason="Orthanc (Debian package orthanc) not installed")
def test_orthanc_autoroute_sends_each_study_once(
    serve: ServeProcess, tcga_study: WrittenStudy, tmp_path: Path
) -> None:
    """deploy/orthanc-autoroute.lua as shipped: a stable MR study goes to tumorlens once; the
    results coming back into the study do not route it again (no loop)."""
    orthanc = Orthanc(
        tmp_path / "orthanc",
        {"tumorlens": (AE_TITLE, "127.0.0.1", serve.port)},
        lua_scripts=(REPO / "deploy" / "orthanc-autoroute.lua",),
    )
    serve.env["TUMORLENS_DESTINATIONS"] = ""
    serve.env["TUMORLENS_PEERS"] = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    serve.start()
    orthanc.start()
    try:
        (study_id,) = orthanc.upload(tcga_study.paths)  # no push by hand: the Lua routes it
        job = assert_complete(serve, tcga_study, "ORTHANC")
        assert_results_in_orthanc(orthanc, study_id, job)
        time.sleep(orthanc.stable_age + 4)  # the results made the study stable again
        assert [j.version for j in serve.jobs.list_jobs()] == [1]
        stores = [orthanc.get(f"/jobs/{i}") for i in orthanc.get("/jobs")]
        stores = [j for j in stores if j["Type"] == "DicomModalityStore"]
        assert len(stores) == 1 and stores[0]["State"] == "Success"
        assert "routing 104 MR instances" in orthanc.log_path.read_text()
    finally:
        orthanc.stop()
        shutil.rmtree(tmp_path / "orthanc", ignore_errors=True)
