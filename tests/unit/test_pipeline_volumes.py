"""Chosen series -> volumes: geometry, voxel values and the reasons a series is dropped."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.helpers.synthetic import enhanced_mr
from tumorlens.dicomio.make_study import WrittenSeries, make_study
from tumorlens.errors import NoUsableSeriesError
from tumorlens.pipeline.volumes import (
    DroppedSeries,
    SeriesVolume,
    series_volume,
    study_volumes,
)


def _affine() -> np.ndarray:
    """Oblique (10 degrees about x), flipped in x, 0.9 x 1.1 x 3 mm: nothing axis-aligned."""
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    rotation = np.array([[-1, 0, 0], [0, c, -s], [0, s, c]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = (40.0, -60.0, -20.0)
    return affine


def _write(tmp_path: Path, n_slices: int = 14, name: str = "t1") -> tuple[Path, WrittenSeries]:
    rng = np.random.default_rng(n_slices)
    data = rng.integers(0, 4000, size=(20, 16, n_slices)).astype(np.int16)
    source = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, _affine()), str(source))
    study = make_study({"t1": source}, tmp_path / f"study_{name}", seed=n_slices)
    return source, study.series[0]


def _volume(series: WrittenSeries, paths: list[Path] | None = None) -> SeriesVolume:
    result = series_volume("t1", series.series_instance_uid, paths or list(series.paths))
    assert isinstance(result, SeriesVolume), result
    return result


def _dropped(series: WrittenSeries, paths: list[Path]) -> DroppedSeries:
    result = series_volume("t1", series.series_instance_uid, paths)
    assert isinstance(result, DroppedSeries)
    return result


def _same_world(image: nib.Nifti1Image, source: Path) -> None:
    """Same voxels at the same places (the voxel order may differ: slices are sorted)."""
    ours = nib.as_closest_canonical(image)
    theirs = nib.as_closest_canonical(nib.load(str(source)))
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    np.testing.assert_array_equal(ours.get_fdata(), theirs.get_fdata())


def test_volume_matches_the_source_voxels_and_affine(tmp_path: Path) -> None:
    source, series = _write(tmp_path)
    volume = _volume(series)
    _same_world(volume.image, source)
    assert volume.frame_of_reference_uid
    assert volume.warnings == ()
    # Voxel plane k comes from slices[k]: its Image Position (Patient) is the plane's origin.
    assert len(volume.instance_paths) == 14
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    for k, ref in enumerate(volume.slices):
        position = [float(v) for v in pydicom.dcmread(ref.path).ImagePositionPatient]
        np.testing.assert_allclose((lps @ [0, 0, k, 1])[:3], position, atol=1e-3)
    plane = pydicom.dcmread(volume.slices[3].path).pixel_array
    np.testing.assert_array_equal(np.asarray(volume.image.dataobj)[:, :, 3], plane.T)


def test_a_missing_middle_slice_drops_the_series(tmp_path: Path) -> None:
    _, series = _write(tmp_path)
    paths = [p for i, p in enumerate(series.paths) if i != 6]
    assert "1 missing slice(s)" in _dropped(series, paths).reason


def test_a_missing_end_slice_drops_the_series(tmp_path: Path) -> None:
    _, series = _write(tmp_path)
    reason = _dropped(series, list(series.paths[:-1])).reason
    assert "13 of 14 instances" in reason


def test_mixed_orientations_drop_the_series(tmp_path: Path) -> None:
    _, series = _write(tmp_path)
    odd = pydicom.dcmread(series.paths[4])
    odd.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal slice in an axial stack
    odd.save_as(series.paths[4])
    assert "mixed orientations" in _dropped(series, list(series.paths)).reason


def test_too_few_slices_drop_the_series(tmp_path: Path) -> None:
    _, series = _write(tmp_path, n_slices=3)
    assert "only 3 slice(s)" in _dropped(series, list(series.paths)).reason


def test_undecodable_pixels_drop_the_series(tmp_path: Path) -> None:
    _, series = _write(tmp_path)
    broken = pydicom.dcmread(series.paths[2])
    broken.PixelData = broken.PixelData[:100]
    broken.save_as(series.paths[2])
    assert "cannot be decoded" in _dropped(series, list(series.paths)).reason


def test_study_goes_on_without_a_dropped_series_and_fails_without_any(tmp_path: Path) -> None:
    _, good = _write(tmp_path, name="good")
    _, short = _write(tmp_path, n_slices=4, name="short")
    result = study_volumes(
        {
            "t1": (good.series_instance_uid, good.paths),
            "t2": (short.series_instance_uid, short.paths),
        }
    )
    assert set(result.volumes) == {"t1"}
    assert [d.sequence for d in result.dropped] == ["t2"]
    with pytest.raises(NoUsableSeriesError, match="only 4 slice"):
        study_volumes({"t2": (short.series_instance_uid, short.paths)})


def _enhanced(series: WrittenSeries, out: Path) -> Path:
    return enhanced_mr(series.paths, out / "enhanced.dcm")


def test_enhanced_mr_multiframe_gives_the_same_volume(tmp_path: Path) -> None:
    source, series = _write(tmp_path)
    path = _enhanced(series, tmp_path)
    volume = _volume(series, [path])
    _same_world(volume.image, source)
    assert volume.instance_paths == (path,)
    frames = [s.frame for s in volume.slices]
    assert sorted(f for f in frames if f is not None) == list(range(1, 15))
    classic = _volume(series)
    np.testing.assert_allclose(volume.affine, classic.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(volume.image.dataobj), classic.image.dataobj)
