"""Real PACS peers push studies into ``tumorlens serve``: dcmtk's storescu and Orthanc.

The job must reach DONE with exactly the instance and series counts that were sent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.orthanc import Orthanc, available
from tests.helpers.service import AE_TITLE, ServeProcess
from tests.helpers.volumes import synthetic_head
from tumorlens.dicomio.make_study import WrittenStudy, make_study
from tumorlens.store.states import JobState

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
    result = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", AE_TITLE, "+sd", "+r", "127.0.0.1", str(port),
         str(folder)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def assert_complete(serve: ServeProcess, study: WrittenStudy, calling_aet: str) -> None:
    uid = study.study_instance_uid
    job = serve.wait_for(uid, timeout=300)
    sent = sum(len(s.paths) for s in study.series)
    assert job.state is JobState.DONE, job.error
    assert (job.instances, job.series, job.version) == (sent, len(study.series), 1)
    assert job.calling_aet == calling_aet
    assert job.details["instances"] == sent
    by_series = {s["series_instance_uid"]: s for s in job.details["series"]}
    for series in study.series:
        assert by_series[series.series_instance_uid]["instances"] == len(series.paths)
    assert len(serve.spool_files(uid)) == sent


def test_storescu_pushes_a_4x155_study(serve: ServeProcess, brats_grid_study: WrittenStudy) -> None:
    assert [len(s.paths) for s in brats_grid_study.series] == [155] * 4
    serve.start()
    storescu(serve.port, brats_grid_study.out_dir)
    assert_complete(serve, brats_grid_study, "STORESCU")


def test_storescu_pushes_the_real_case(serve: ServeProcess, tcga_study: WrittenStudy) -> None:
    serve.start()
    storescu(serve.port, tcga_study.out_dir)
    assert_complete(serve, tcga_study, "STORESCU")
    job = serve.jobs.get(tcga_study.study_instance_uid)
    for series in job.details["series"]:
        assert series["instances"] == 26
        assert series["slice_spacing"] == pytest.approx(5.5, abs=0.2)


@pytest.mark.skipif(not available(), reason="Orthanc (Debian package orthanc) not installed")
def test_orthanc_pushes_a_study(
    serve: ServeProcess, tcga_study: WrittenStudy, tmp_path: Path
) -> None:
    serve.env["TUMORLENS_ALLOWED_CALLING_AETS"] = "ORTHANC"
    serve.start()
    orthanc = Orthanc(tmp_path / "orthanc", {"tumorlens": (AE_TITLE, "127.0.0.1", serve.port)})
    orthanc.start()
    try:
        files = [p for s in tcga_study.series for p in s.paths]
        (study_id,) = orthanc.upload(files)
        orthanc.echo("tumorlens")
        orthanc.push_study("tumorlens", study_id)
        assert_complete(serve, tcga_study, "ORTHANC")
    finally:
        orthanc.stop()
        shutil.rmtree(tmp_path / "orthanc", ignore_errors=True)
