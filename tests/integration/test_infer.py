"""``tumorlens infer``: the worker's pipeline on a folder, no network or Redis, on the real
case; the objects it writes are checked by independent readers (dciodvfy, dcmqi, highdicom)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.helpers.dcmqi import assert_seg_matches
from tests.helpers.dicom3tools import dciodvfy
from tests.helpers.synthetic import mr_instance
from tumorlens.dicomio.make_study import WrittenStudy
from tumorlens.writers import codes

pytestmark = pytest.mark.integration


def infer(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tumorlens", "infer", str(folder), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def inferred(tcga_dicom: WrittenStudy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("infer")
    result = infer(tcga_dicom.out_dir, out, "--burned-overlays", "--json", str(out / "copy.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "whole tumour" in result.stdout
    return out


def result_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "result.json").read_text())
    return data


def test_result_json_says_what_was_used_found_and_how_long_it_took(
    inferred: Path, tcga_dicom: WrittenStudy
) -> None:
    result = result_of(inferred)
    assert result == json.loads((inferred / "copy.json").read_text())
    assert result["study_instance_uid"] == tcga_dicom.study_instance_uid
    assert result["sequences_used"] == ["t1", "t1c", "t2", "flair"]
    assert result["instances"] == 104
    assert set(result["volumes_ml"]) == {"core", "oedema", "enhancing", "whole_tumour"}
    assert result["volumes_ml"]["whole_tumour"] == pytest.approx(
        sum(result["volumes_ml"][k] for k in ("core", "oedema", "enhancing")), abs=0.01
    )
    lesions = result["lesions"]
    assert len(lesions) == result["lesion_count"] >= 1
    assert sum(x["volumes_ml"]["whole_tumour"] for x in lesions) == pytest.approx(
        result["volumes_ml"]["whole_tumour"], abs=0.01
    )
    assert all(1 <= x["slices"][0] <= x["slices"][1] <= 26 for x in lesions)
    types = result["tumour_type"]["probabilities"]
    assert sum(types.values()) == pytest.approx(1.0, abs=1e-3)
    assert 0.0 <= result["grade"]["hgg_probability"] <= 1.0
    assert sum(result["slice_classifier"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert {m["task"] for m in result["models"]} == {"segmentation", "slice-classification"}
    assert set(result["timings_s"]) >= {"select-series", "segment", "write-objects"}
    assert "research use" in result["intended_use"].lower()
    kinds = [o["kind"] for o in result["objects"]]
    assert {"SR", "PDF", "SC"} <= set(kinds)
    for item in result["objects"]:
        ds = pydicom.dcmread(inferred / item["file"])
        assert str(ds.SOPInstanceUID) == item["sop_instance_uid"]
        assert ds.StudyInstanceUID == tcga_dicom.study_instance_uid


def test_every_object_passes_dciodvfy(inferred: Path) -> None:
    for item in result_of(inferred)["objects"]:
        messages = dciodvfy(inferred / item["file"])
        errors = [m for m in messages if m.startswith("Error")]
        assert errors == [], (item["kind"], errors)
        if item["kind"] != "SR":  # the SR warns only about our private coding scheme
            assert messages == [], (item["kind"], messages)
        else:
            assert all(codes.PRIVATE_SCHEME in m for m in messages), messages


def test_dcmqi_reads_the_seg_as_the_label_map(inferred: Path) -> None:
    result = result_of(inferred)
    labels_image = nib.load(str(inferred / "labels.nii.gz"))
    labels = np.asarray(labels_image.dataobj).astype(np.uint8)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
    # The shipped model labels something in this case (see the model card): a SEG must come.
    assert labels.any() and "SEG" in {o["kind"] for o in result["objects"]}
    assert_seg_matches(
        inferred / "SEG.dcm", labels, np.asarray(labels_image.affine), inferred / "dcmqi"
    )
    voxel_ml = abs(np.linalg.det(labels_image.affine[:3, :3])) / 1000
    assert result["volumes_ml"]["whole_tumour"] == pytest.approx(
        np.count_nonzero(labels) * voxel_ml, abs=0.01
    )


def test_highdicom_finds_every_measurement_in_the_sr(inferred: Path) -> None:
    result = result_of(inferred)
    sr = hd.sr.srread(inferred / "SR.dcm")
    report = hd.sr.MeasurementReport.from_sequence([sr])
    regions = report.get_volumetric_roi_measurement_groups()
    present = [k for k in ("core", "oedema", "enhancing") if result["volumes_ml"][k] > 0]
    assert len(regions) == len(present)
    whole = [g for g in report.get_image_measurement_groups() if g.finding_type.value == "WT"]
    (volume, count) = whole[0].get_measurements()
    assert volume.value == pytest.approx(result["volumes_ml"]["whole_tumour"], abs=1e-3)
    assert count.value == result["lesion_count"]


def test_a_folder_without_mr_fails_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "ct"
    folder.mkdir()
    for i in range(12):
        ds = mr_instance("1.2.826.0.1.3680043.10.9.2", "1.2.826.0.1.3680043.10.9.2.1", i)
        ds.Modality = "CT"
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    result = infer(folder, tmp_path / "out")
    assert result.returncode == 2
    assert "no usable MR series: 1 CT series" in result.stderr
    assert not (tmp_path / "out").exists()
