"""Chosen series -> volumes: one NIfTI image per sequence, with its slices in spatial order.

Each series is read one at a time (headers first, then pixels into one preallocated array), so
memory stays at one volume whatever the study's size. A series that cannot make a trustworthy
volume is dropped with a reason; the study goes on with the others.

Geometry (PS3.3 C.7.6.2.1.1). The volume keeps the acquisition's voxel order: axis 0 runs along
the rows (increasing column index), axis 1 down the columns, axis 2 through the slices sorted by
position along the plane normal, so ``slices[k]`` is the instance (or frame) of voxel plane
``k``; that is what a Segmentation must reference to lie on the source series. From the LPS
affine ``A``: ``A[:, 0]`` = row cosine x column spacing, ``A[:, 1]`` = column cosine x row
spacing, ``A[:, 2]`` = mean step between consecutive Image Positions (Patient) (a gantry tilt
stays a shear), ``A[:, 3]`` = first position; the image carries ``diag(-1, -1, 1) A`` (RAS+).
No reorientation or resampling happens here.

Classic MR Image Storage (one slice per instance) and Enhanced / Legacy Converted Enhanced MR
(frames with Plane Position/Orientation and Pixel Measures functional groups, C.7.6.16.2) are
both read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from tumorlens.errors import NoUsableSeriesError
from tumorlens.pipeline.series_selection import DEFAULT_MIN_SLICES, DISPLAY, SeriesSelection

LOG = logging.getLogger(__name__)

LPS_TO_RAS: Final = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Direction cosines may differ by this much between slices (rounding in DS values).
ORIENTATION_TOLERANCE: Final = 1e-3
#: Pixel spacing may differ by this fraction between slices.
SPACING_TOLERANCE: Final = 1e-3
#: A step between slices may differ from the median step by this fraction (or 0.05 mm).
STEP_TOLERANCE: Final = 0.1
STEP_TOLERANCE_MM: Final = 0.05

Affine = npt.NDArray[np.float64]


class _Unusable(Exception):
    """Internal: this series cannot be made into a volume (the message is the reason)."""


@dataclass(frozen=True)
class SliceRef:
    """Where voxel plane ``k`` came from: an instance, and its frame for multi-frame ones."""

    path: Path
    sop_instance_uid: str
    frame: int | None = None  # 1-based Frame Number in a multi-frame instance


@dataclass(frozen=True)
class SeriesVolume:
    """One sequence's volume: RAS+ affine, voxel plane ``k`` from ``slices[k]``."""

    sequence: str
    series_instance_uid: str
    frame_of_reference_uid: str
    image: nib.Nifti1Image
    slices: tuple[SliceRef, ...]
    warnings: tuple[str, ...] = ()

    @property
    def instance_paths(self) -> tuple[Path, ...]:
        """Instances ordered by slice position (each once, multi-frame ones too)."""
        return tuple(dict.fromkeys(s.path for s in self.slices))

    @property
    def affine(self) -> Affine:
        return np.asarray(self.image.affine, dtype=np.float64)

    @property
    def zooms(self) -> tuple[float, float, float]:
        z = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(z[0]), float(z[1]), float(z[2])


@dataclass(frozen=True)
class DroppedSeries:
    """A chosen series that could not be made into a volume, and why."""

    sequence: str
    series_instance_uid: str
    reason: str


@dataclass(frozen=True)
class StudyVolumes:
    """The volumes by sequence (t1, t1c, t2, flair; absent ones have no key) and the drops."""

    volumes: dict[str, SeriesVolume]
    dropped: tuple[DroppedSeries, ...] = field(default=())

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(
            f"{DISPLAY.get(s, s)}: {w}" for s, v in self.volumes.items() for w in v.warnings
        )


@dataclass(frozen=True)
class _Slice:
    """Geometry of one slice, before any pixel is read."""

    ref: SliceRef
    position: npt.NDArray[np.float64]  # Image Position (Patient), LPS mm
    orientation: npt.NDArray[np.float64]  # row cosine then column cosine
    spacing: tuple[float, float]  # Pixel Spacing: between rows, between columns
    rows: int
    columns: int
    instance_number: int | None
    slope: float
    intercept: float


# --- reading headers ---------------------------------------------------------------------------
def _floats(value: Any, n: int, what: str) -> npt.NDArray[np.float64]:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _Unusable(f"{what} is not numeric: {value!r}") from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise _Unusable(f"{what} must hold {n} finite numbers, got {value!r}")
    return out


def _first_item(container: Dataset | None, keyword: str) -> Dataset | None:
    if container is None:
        return None
    seq = container.get(keyword)
    return seq[0] if seq else None


def _group(shared: Dataset | None, frame: Dataset | None, keyword: str) -> Dataset | None:
    """A functional group macro's item: per-frame when present, else shared (C.7.6.16)."""
    return _first_item(frame, keyword) or _first_item(shared, keyword)


def _rescale(item: Dataset | None) -> tuple[float, float]:
    if item is None:
        return 1.0, 0.0
    slope = float(item.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(item.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _instance_number(ds: Dataset) -> int | None:
    try:
        value = ds.get("InstanceNumber")
        return int(value) if value is not None and str(value).strip() else None
    except (TypeError, ValueError):
        return None


def _slices_of(path: Path, ds: Dataset) -> Iterator[_Slice]:
    """The slices of one instance: itself, or each frame of a multi-frame instance."""
    missing = [k for k in ("Rows", "Columns") if k not in ds]
    if missing:
        raise _Unusable(f"{path.name}: no {', '.join(missing)}")
    rows, columns = int(ds.Rows), int(ds.Columns)
    uid = str(ds.get("SOPInstanceUID", ""))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        if frames != 1:
            raise _Unusable(f"{path.name}: {frames} frames without functional groups")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in ds:
                raise _Unusable(f"{path.name}: no {keyword}")
        spacing = _floats(ds.PixelSpacing, 2, "Pixel Spacing")
        yield _Slice(
            SliceRef(path, uid),
            _floats(ds.ImagePositionPatient, 3, "Image Position (Patient)"),
            _floats(ds.ImageOrientationPatient, 6, "Image Orientation (Patient)"),
            (float(spacing[0]), float(spacing[1])),
            rows,
            columns,
            _instance_number(ds),
            *_rescale(ds),
        )
        return
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) not in (0, frames):
        raise _Unusable(f"{path.name}: {len(per_frame)} per-frame groups for {frames} frames")
    for index in range(frames):
        frame = per_frame[index] if per_frame else None
        position = _group(shared, frame, "PlanePositionSequence")
        orientation = _group(shared, frame, "PlaneOrientationSequence")
        measures = _group(shared, frame, "PixelMeasuresSequence")
        if position is None or "ImagePositionPatient" not in position:
            raise _Unusable(f"{path.name} frame {index + 1}: no Plane Position (Patient)")
        if orientation is None or "ImageOrientationPatient" not in orientation:
            raise _Unusable(f"{path.name} frame {index + 1}: no Plane Orientation (Patient)")
        if measures is None or "PixelSpacing" not in measures:
            raise _Unusable(f"{path.name} frame {index + 1}: no Pixel Measures")
        spacing = _floats(measures.PixelSpacing, 2, "Pixel Spacing")
        yield _Slice(
            SliceRef(path, uid, index + 1),
            _floats(position.ImagePositionPatient, 3, "Image Position (Patient)"),
            _floats(orientation.ImageOrientationPatient, 6, "Image Orientation (Patient)"),
            (float(spacing[0]), float(spacing[1])),
            rows,
            columns,
            index + 1,
            *_rescale(_group(shared, frame, "PixelValueTransformationSequence")),
        )


def _read_header(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise _Unusable(f"{path.name}: cannot read the data set: {exc}") from exc


# --- geometry checks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    slices: tuple[_Slice, ...]  # sorted along the normal
    affine_lps: Affine
    warnings: tuple[str, ...]


def _check_geometry(slices: Sequence[_Slice], min_slices: int) -> _Geometry:
    """One orientation, spacing and matrix; uniform steps; enough slices (else _Unusable)."""
    if len(slices) < min_slices:
        raise _Unusable(f"only {len(slices)} slice(s); at least {min_slices} are needed")
    first = slices[0]
    for s in slices[1:]:
        if np.max(np.abs(s.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise _Unusable(
                "mixed orientations: Image Orientation (Patient) "
                f"{np.round(first.orientation, 3).tolist()} and "
                f"{np.round(s.orientation, 3).tolist()}"
            )
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise _Unusable(
                f"mixed matrices: {first.rows}x{first.columns} and {s.rows}x{s.columns}"
            )
        if not np.allclose(s.spacing, first.spacing, rtol=SPACING_TOLERANCE, atol=0):
            raise _Unusable(f"mixed pixel spacings: {first.spacing} and {s.spacing}")
    row, col = first.orientation[:3], first.orientation[3:]
    if min(np.linalg.norm(row), np.linalg.norm(col)) < 0.5:
        raise _Unusable("Image Orientation (Patient) has a null direction cosine")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 0.01:
        raise _Unusable("Image Orientation (Patient) cosines are not orthogonal")
    normal = np.cross(row, col)
    ordered = sorted(slices, key=lambda s: float(s.position @ normal))
    along = np.array([float(s.position @ normal) for s in ordered])
    gaps = np.diff(along)
    if np.any(gaps < STEP_TOLERANCE_MM):
        at = float(along[1:][int(np.argmin(gaps))])
        raise _Unusable(
            f"two slices at one position ({at:.2f} mm along the normal): repeated or multi-echo"
            " images in one series"
        )
    step = float(np.median(gaps))
    off = np.abs(gaps - step) > max(STEP_TOLERANCE * step, STEP_TOLERANCE_MM)
    if np.any(off):
        k = int(np.argmax(off))
        missing = round(float(gaps[k]) / step) - 1
        where = f"between {along[k]:.1f} and {along[k + 1]:.1f} mm along the normal"
        if missing >= 1 and abs(gaps[k] - (missing + 1) * step) <= STEP_TOLERANCE * step:
            raise _Unusable(f"{missing} missing slice(s) {where} (slice spacing {step:.2f} mm)")
        raise _Unusable(
            f"non-uniform slice spacing: {gaps[k]:.2f} mm {where}, {step:.2f} mm elsewhere"
        )
    steps = np.diff(np.stack([s.position for s in ordered]), axis=0)
    mean_step = steps.mean(axis=0)
    # The in-plane part of each step must agree too (a constant tilt is a shear, a varying one
    # is a curved stack that no affine describes).
    if np.max(np.linalg.norm(steps - mean_step, axis=1)) > max(STEP_TOLERANCE * step, 0.1):
        raise _Unusable("slice positions do not lie on a straight line")
    warnings = []
    if abs(float(mean_step @ normal)) < 0.999 * float(np.linalg.norm(mean_step)):
        tilt = float(np.degrees(np.arccos(min(1.0, step / float(np.linalg.norm(mean_step))))))
        warnings.append(f"slices are sheared by {tilt:.1f} degrees (gantry tilt)")
    numbers = [s.instance_number for s in ordered]
    if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
        span = max(n for n in numbers if n is not None) - min(n for n in numbers if n is not None)
        if span + 1 != len(numbers):
            warnings.append(f"instance numbers span {span + 1} values for {len(numbers)} slices")
    spacing_r, spacing_c = first.spacing
    affine = np.eye(4)
    affine[:3, 0] = row * spacing_c
    affine[:3, 1] = col * spacing_r
    affine[:3, 2] = mean_step
    affine[:3, 3] = ordered[0].position
    return _Geometry(tuple(ordered), affine, tuple(warnings))


def _check_count(headers: Sequence[Dataset], n_slices: int) -> None:
    """Images in Acquisition (0020,1002) tells when instances at the ends are missing.

    Trusted only when every Instance Number lies within 1..total: some vendors count other
    images (phases, echoes) in it, and then their instance numbers run past it.
    """
    expected = {int(h.ImagesInAcquisition) for h in headers if h.get("ImagesInAcquisition")}
    if len(expected) != 1 or len(headers) != n_slices:
        return
    (total,) = expected
    numbers = [_instance_number(h) for h in headers]
    indexed = all(n is not None and 1 <= n <= total for n in numbers)
    if total > n_slices and indexed:
        raise _Unusable(f"{n_slices} of {total} instances (Images in Acquisition) present")


# --- pixels -------------------------------------------------------------------------------------
def _read_pixels(geometry: _Geometry) -> npt.NDArray[np.float32]:
    first = geometry.slices[0]
    volume = np.empty((first.columns, first.rows, len(geometry.slices)), dtype=np.float32)
    by_path: dict[Path, list[tuple[int, _Slice]]] = {}
    for k, s in enumerate(geometry.slices):
        by_path.setdefault(s.ref.path, []).append((k, s))
    for path, planes in by_path.items():
        try:
            ds = pydicom.dcmread(path)
            pixels = np.asarray(ds.pixel_array)
        except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
            raise _Unusable(f"{path.name}: pixel data cannot be decoded: {exc}") from exc
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        if pixels.ndim != 3 or pixels.shape[1:] != (first.rows, first.columns):
            raise _Unusable(f"{path.name}: pixel data of shape {pixels.shape} (expected 2D)")
        for k, s in planes:
            index = (s.ref.frame or 1) - 1
            plane = pixels[index].astype(np.float32)
            if s.slope != 1.0 or s.intercept != 0.0:
                plane = plane * np.float32(s.slope) + np.float32(s.intercept)
            volume[:, :, k] = plane.T  # pixel (row r, column c) is voxel (c, r)
    if not np.all(np.isfinite(volume)):
        raise _Unusable("pixel data holds non-finite values")
    return volume


def nifti_image(data: npt.NDArray[Any], affine: Affine, code: int = 1) -> nib.Nifti1Image:
    """A NIfTI image in mm with both sform and qform set (code 1: scanner coordinates)."""
    image = nib.Nifti1Image(data, affine)  # type: ignore[no-untyped-call]
    image.header.set_xyzt_units("mm")  # type: ignore[no-untyped-call]
    image.set_qform(affine, code=code)  # type: ignore[no-untyped-call]
    image.set_sform(affine, code=code)  # type: ignore[no-untyped-call]
    return image


# --- one series, all series ---------------------------------------------------------------------
def series_volume(
    sequence: str,
    series_instance_uid: str,
    paths: Iterable[Path],
    *,
    min_slices: int = DEFAULT_MIN_SLICES,
) -> SeriesVolume | DroppedSeries:
    """The volume of one series, or why it cannot be had."""
    try:
        headers = [(Path(p), _read_header(Path(p))) for p in sorted(paths)]
        if not headers:
            raise _Unusable("no instances")
        slices = [s for path, ds in headers for s in _slices_of(path, ds)]
        geometry = _check_geometry(slices, min_slices)
        _check_count([ds for _, ds in headers], len(slices))
        frames_of_reference = {str(ds.get("FrameOfReferenceUID", "")) for _, ds in headers}
        if len(frames_of_reference) > 1:
            raise _Unusable("instances in different Frames of Reference")
        volume = _read_pixels(geometry)
    except _Unusable as exc:
        LOG.warning("%s series %s dropped: %s", sequence, series_instance_uid, exc)
        return DroppedSeries(sequence, series_instance_uid, str(exc))
    image = nifti_image(volume, LPS_TO_RAS @ geometry.affine_lps)
    return SeriesVolume(
        sequence=sequence,
        series_instance_uid=series_instance_uid,
        frame_of_reference_uid=frames_of_reference.pop(),
        image=image,
        slices=tuple(s.ref for s in geometry.slices),
        warnings=geometry.warnings,
    )


def study_volumes(
    series: Mapping[str, tuple[str, Iterable[Path]]],
    *,
    min_slices: int = DEFAULT_MIN_SLICES,
) -> StudyVolumes:
    """Volumes for ``{sequence: (series instance UID, instance paths)}``, one series at a time.

    Raises :class:`NoUsableSeriesError` when no series gives a volume.
    """
    volumes: dict[str, SeriesVolume] = {}
    dropped: list[DroppedSeries] = []
    for sequence, (uid, paths) in series.items():
        result = series_volume(sequence, uid, paths, min_slices=min_slices)
        if isinstance(result, DroppedSeries):
            dropped.append(result)
        else:
            volumes[sequence] = result
    if not volumes:
        reasons = "; ".join(f"{DISPLAY.get(d.sequence, d.sequence)}: {d.reason}" for d in dropped)
        raise NoUsableSeriesError(f"no chosen series makes a usable volume ({reasons})")
    return StudyVolumes(volumes, tuple(dropped))


def selected_volumes(
    selection: SeriesSelection,
    instances: Mapping[str, Iterable[Path]],
    *,
    min_slices: int = DEFAULT_MIN_SLICES,
) -> StudyVolumes:
    """Volumes of the series chosen by series selection; ``instances`` maps Series Instance
    UID -> the spool paths of its instances."""
    series = {
        c.sequence: (c.series_instance_uid, instances.get(c.series_instance_uid, ()))
        for c in selection.choices
    }
    return study_volumes(series, min_slices=min_slices)
