"""dcmqi's ``segimage2itkimage`` as an independent reader of our SEG objects."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from tumorlens.writers import codes

REPO = Path(__file__).resolve().parents[2]


def tool() -> str:
    path = shutil.which("segimage2itkimage") or str(REPO / ".venv" / "bin" / "segimage2itkimage")
    if not Path(path).exists():
        pytest.skip("dcmqi (segimage2itkimage) is not installed")
    return path


def assert_seg_matches(
    seg_path: Path,
    labels: npt.NDArray[np.uint8],
    affine_ras: npt.NDArray[np.float64],
    work: Path,
) -> None:
    """dcmqi reads ``seg_path``; its geometry must be the reference grid (cropped to the frames
    present, shifted by whole voxels) and its voxels ``labels`` (BraTS 1..3) there."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [tool(), "--inputDICOM", str(seg_path), "--outputDirectory", str(work), "-t", "nifti",
         "--mergeSegments"],
        check=True, capture_output=True,
    )  # fmt: skip
    meta = json.loads((work / "meta.json").read_text())
    label_of = {
        int(s["labelID"]): codes.REGION_BY_TYPE_CODE[
            s["SegmentedPropertyTypeCodeSequence"]["CodeValue"]
        ].label
        for group in meta["segmentAttributes"]
        for s in group
    }
    image = nib.load(str(next(work.glob("*.nii.gz"))))
    dcmqi = np.asarray(image.dataobj).astype(np.uint8)
    to_reference = np.linalg.inv(affine_ras) @ image.affine
    np.testing.assert_allclose(to_reference[:3, :3], np.eye(3), atol=1e-4)
    offset = to_reference[:3, 3]
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-3)
    i, j, k = (int(v) for v in np.round(offset))
    ni, nj, nk = dcmqi.shape[:3]
    expected = labels[i : i + ni, j : j + nj, k : k + nk]
    relabelled = np.zeros_like(dcmqi)
    for number, label in label_of.items():
        relabelled[dcmqi == number] = label
    np.testing.assert_array_equal(relabelled, expected)
    # Nothing outside the frames dcmqi wrote: those frames were empty and omitted.
    outside = labels.copy()
    outside[i : i + ni, j : j + nj, k : k + nk] = 0
    assert not outside.any()
