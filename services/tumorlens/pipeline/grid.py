"""Bring a study's sequences onto one grid: the reference series' own voxel grid.

The reference is T1c when present, else FLAIR, else T2, else T1 (the series the results are
drawn on). Series sharing its Frame of Reference UID (PS3.3 C.7.4.1: one patient position, one
coordinate system) are resampled by physical coordinates, trilinear, after a check for
patient motion between series (a rigid fit from the identity, kept only when it fits clearly
better). Others (a re-positioned patient, another session) get a rigid registration (6 DOF,
correlation ratio at 4 mm, see :mod:`tumorlens.pipeline.registration`) first. Where the
correlation ratio cannot judge a pair (T2 against T1c: dark T1c is CSF and bone alike, bright
T2 CSF and fat alike), the fit is redone by normalised mutual information, which needs no
function from one contrast to the other. Each sequence records its transform and fit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import nibabel as nib
import numpy as np
import numpy.typing as npt

from tumorlens.errors import NoUsableSeriesError
from tumorlens.pipeline.registration import (
    CORRELATION_RATIO,
    DEFAULT_RANGE,
    MUTUAL_INFORMATION,
    Affine,
    FloatArray,
    bin_labels,
    head_mask,
    register,
    resample,
    resample_isotropic,
)
from tumorlens.pipeline.volumes import SeriesVolume, nifti_image

LOG = logging.getLogger(__name__)

REFERENCE_ORDER: Final[tuple[str, ...]] = ("t1c", "flair", "t2", "t1")
REGISTRATION_SPACING_MM: Final = 4.0
#: A rigid fit explaining less than this share of the moving variance is flagged.
MIN_CORRELATION_RATIO: Final = 0.35
#: Within one Frame of Reference, a motion correction must raise the correlation ratio this
#: much to be kept, and is sought within 15 mm and 15 degrees.
MOTION_MIN_GAIN: Final = 0.03
MOTION_RANGE: Final = (15.0, 15.0, 0.0, 0.0)
#: The same for a fit by mutual information (normalised MI - 1). TCGA-FG-6692's T2, moved
#: 16 mm and 8 degrees: 0.016 at the identity, 0.053 fitted (+0.037); phantom T2s moved 14 mm
#: and 10 degrees gain 0.04-0.06, unmoved ones nothing (tests/integration/test_brain_mask.py).
MI_MIN_GAIN: Final = 0.015
REGISTERED: Final = "rigid registration"
MOTION_CORRECTED: Final = "frame of reference, motion corrected"
_BINS: Final = 16
_MIN_OVERLAP: Final = 2000  # 4 mm voxels (128 mL) in common, else use them all
_POINTS: Final = 8000  # sampled head voxels: enough for 6 parameters
_COARSE_SPACING_MM: Final = 8.0  # mutual information's first stage


@dataclass(frozen=True)
class AlignedSequence:
    """One sequence resampled onto the reference grid."""

    sequence: str
    data: FloatArray
    # Reference mm -> this series' mm (RAS); identity when the Frame of Reference is shared.
    transform: Affine
    # "reference", "frame of reference", "frame of reference, motion corrected" or
    # "rigid registration"
    method: str
    correlation_ratio: float | None = None
    warnings: tuple[str, ...] = ()
    #: What the fit maximised: "correlation ratio" or "mutual information" (then
    #: ``correlation_ratio`` is None and ``similarity`` holds normalised MI - 1).
    measure: str = CORRELATION_RATIO
    similarity: float | None = None


@dataclass(frozen=True)
class AlignedStudy:
    """Every sequence on the reference series' grid (``affine``, ``shape``)."""

    reference: str
    affine: Affine
    shape: tuple[int, int, int]
    sequences: dict[str, AlignedSequence]
    seconds: float = 0.0
    warnings: tuple[str, ...] = field(default=())

    def array(self, sequence: str) -> FloatArray:
        return self.sequences[sequence].data

    def image(self, sequence: str) -> nib.Nifti1Image:
        return nifti_image(self.sequences[sequence].data, self.affine)

    @property
    def zooms(self) -> tuple[float, float, float]:
        z = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(z[0]), float(z[1]), float(z[2])


def reference_sequence(available: Mapping[str, object]) -> str:
    for name in REFERENCE_ORDER:
        if name in available:
            return name
    raise NoUsableSeriesError("no T1c, FLAIR, T2 or T1 volume to align")


def _data(volume: SeriesVolume) -> FloatArray:
    return np.asarray(volume.image.dataobj, dtype=np.float32)


@dataclass(frozen=True)
class _Rigid:
    transform: Affine
    similarity: float  # correlation ratio, or normalised MI - 1
    initial: float  # the same at the start (identity, or the better start across frames)
    measure: str = CORRELATION_RATIO

    @property
    def gain(self) -> float:
        return self.similarity - self.initial


_Sampled = tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], tuple[Affine, ...]]


@dataclass(frozen=True)
class _Pair:
    """A series and the reference, sampled once for every fit between them."""

    reference: tuple[FloatArray, Affine]  # at REGISTRATION_SPACING_MM
    series: SeriesVolume
    same_frame: bool
    fixed: _Sampled  # the series' head points, their bins, the extra starts

    @property
    def search_range(self) -> tuple[float, float, float, float]:
        return MOTION_RANGE if self.same_frame else DEFAULT_RANGE


def _pair(
    reference: tuple[FloatArray, Affine], series: SeriesVolume, *, same_frame: bool
) -> _Pair | None:
    """The pair at 4 mm; None when either image shows no head."""
    series_iso = resample_isotropic(_data(series), series.affine, REGISTRATION_SPACING_MM)
    fixed = _fixed_points(*series_iso, reference, same_frame=same_frame)
    return None if fixed is None else _Pair(reference, series, same_frame, fixed)


def _rigid(pair: _Pair, measure: str = CORRELATION_RATIO) -> _Rigid:
    """Rigid transform (reference mm -> series mm) by ``measure`` at 4 mm.

    The series is the binned (fixed) side and the reference is sampled: the reference is
    T1c, whose dark voxels are CSF and bone alike, while a T2's or FLAIR's classes separate
    them, and the correlation ratio needs the binned image to be the more telling one.
    Mutual information is fitted at 8 mm first: at 4 mm its basin is narrower than a
    15 mm, 10 degree movement (a phantom's T2 moved so stayed put from the identity).
    """
    points, labels, alternatives = pair.fixed
    coarse: tuple[Affine, ...] = ()
    if measure == MUTUAL_INFORMATION:
        series = pair.series
        coarse_series = resample_isotropic(_data(series), series.affine, _COARSE_SPACING_MM)
        coarse_reference = resample_isotropic(*pair.reference, _COARSE_SPACING_MM)
        sampled = _fixed_points(*coarse_series, coarse_reference, same_frame=pair.same_frame)
        if sampled is not None:
            first = register(
                sampled[0],
                sampled[1],
                *coarse_reference,
                initial=np.eye(4),
                alternatives=sampled[2],
                stages=(6,),
                search_range=pair.search_range,
                max_points=_POINTS,
                measure=measure,
            )
            coarse = (first.matrix,)
    fit = register(
        points,
        labels,
        *pair.reference,
        initial=np.eye(4),
        alternatives=alternatives + coarse,
        stages=(6,),
        search_range=pair.search_range,
        max_points=_POINTS,
        measure=measure,
    )
    # The gain is judged against the starts the caller knows (identity, centred), not the
    # coarse fit.
    starts = fit.start_similarities[: 1 + len(alternatives)]
    # The fit maps series mm -> reference mm; resampling wants the inverse.
    transform = np.asarray(np.linalg.inv(fit.matrix), dtype=np.float64)
    return _Rigid(transform, fit.similarity, max(starts), measure)


def _fixed_points(
    series_iso: FloatArray,
    series_affine: Affine,
    reference: tuple[FloatArray, Affine],
    *,
    same_frame: bool,
) -> _Sampled | None:
    """The series' head voxels (mm) with their intensity bins, and the extra starts: None
    when either image shows no head."""
    reference_iso, reference_affine = reference
    inside = head_mask(series_iso)
    reference_head = np.argwhere(head_mask(reference_iso))
    if reference_head.size == 0 or not inside.any():
        return None
    points = series_affine @ np.vstack([np.argwhere(inside).T, np.ones(int(inside.sum()))])
    points = points[:3].T
    labels = bin_labels(series_iso[inside], _BINS)
    # Only where both series have data: series often cover different slabs of the head, and
    # points beyond the reference's slab would be matched against its edge slices.
    voxels = np.linalg.inv(reference_affine) @ np.hstack([points, np.ones((len(points), 1))]).T
    limit = np.asarray(reference_iso.shape)[:, np.newaxis] - 2
    overlap = np.all((voxels[:3] >= 1) & (voxels[:3] <= limit), axis=0)
    if (
        same_frame
        and overlap.sum() >= _MIN_OVERLAP * (REGISTRATION_SPACING_MM / _spacing(series_affine)) ** 3
    ):
        points, labels = points[overlap], labels[overlap]
    alternatives: tuple[Affine, ...] = ()
    if not same_frame:
        # Another Frame of Reference may still be the same session (identity is right) or
        # another one (the heads' centres are closer): start from the better of the two.
        centred = np.eye(4)
        centre = reference_affine @ np.append(reference_head.mean(axis=0), 1.0)
        centred[:3, 3] = centre[:3] - points.mean(axis=0)
        alternatives = (centred,)
    return points, labels, alternatives


def _spacing(affine: Affine) -> float:
    return float(np.abs(np.linalg.det(affine[:3, :3])) ** (1.0 / 3.0))


def _motion(transform: Affine) -> str:
    angle = np.degrees(np.arccos(np.clip((np.trace(transform[:3, :3]) - 1) / 2, -1.0, 1.0)))
    return f"{np.linalg.norm(transform[:3, 3]):.1f} mm, {angle:.1f} degrees"


def align_sequences(
    volumes: Mapping[str, SeriesVolume],
    *,
    correct_motion: bool = True,
    reference: str | None = None,
) -> AlignedStudy:
    """Resample every volume onto the reference series' grid (see module docstring).

    Within a shared Frame of Reference the patient may still have moved between series (in
    TCGA-FG-6692 T1 sits 7 degrees off T1c): with ``correct_motion`` a rigid fit from the
    identity is kept when it raises the correlation ratio by ``MOTION_MIN_GAIN`` to at least
    ``MIN_CORRELATION_RATIO`` (T2 against T1c rarely gets there: dark T1c voxels are CSF and
    bone, bright T2 ones CSF and fat, so neither predicts the other).
    """
    start = time.perf_counter()
    ref_name = reference if reference is not None else reference_sequence(volumes)
    ref = volumes[ref_name]
    ref_data = _data(ref)
    shape = (int(ref_data.shape[0]), int(ref_data.shape[1]), int(ref_data.shape[2]))
    aligned: dict[str, AlignedSequence] = {
        ref_name: AlignedSequence(ref_name, ref_data, np.eye(4), "reference"),
    }
    fixed_iso = resample_isotropic(ref_data, ref.affine, REGISTRATION_SPACING_MM)
    warnings: list[str] = []
    for name, volume in volumes.items():
        if name == ref_name:
            continue
        same_frame = bool(ref.frame_of_reference_uid) and (
            volume.frame_of_reference_uid == ref.frame_of_reference_uid
        )
        notes: list[str] = []
        transform, ratio, method = np.eye(4), None, "frame of reference"
        by_mi: _Rigid | None = None
        if not same_frame or correct_motion:
            pair = _pair(fixed_iso, volume, same_frame=same_frame)
            fit: _Rigid | None = None
            if pair is not None:
                fit = _rigid(pair)
                if fit.similarity < MIN_CORRELATION_RATIO:
                    # The correlation ratio cannot judge this pair: redone by mutual
                    # information on the same points, kept only when it clearly fits better
                    # than the start.
                    redone = _rigid(pair, MUTUAL_INFORMATION)
                    by_mi = redone if redone.gain >= MI_MIN_GAIN else None
            if fit is None:
                notes.append("no head found to register; assumed aligned")
            elif by_mi is not None:
                transform = by_mi.transform
                method = REGISTERED if not same_frame else MOTION_CORRECTED
                how = (
                    f"by mutual information {by_mi.similarity:.3f} (+{by_mi.gain:.3f}; the"
                    f" correlation ratio, {fit.similarity:.2f}, cannot judge these contrasts)"
                )
                notes.append(
                    f"registered {how}"
                    if not same_frame
                    else f"moved against {ref_name} by {_motion(transform)}; corrected {how}"
                )
            elif not same_frame:
                transform, ratio, method = fit.transform, fit.similarity, REGISTERED
                if ratio < MIN_CORRELATION_RATIO:
                    notes.append(f"rigid registration fits poorly (correlation ratio {ratio:.2f})")
            elif fit.similarity < MIN_CORRELATION_RATIO:
                ratio = fit.initial
                notes.append(
                    f"motion check inconclusive (correlation ratio {fit.similarity:.2f}, mutual"
                    " information no better); aligned by the Frame of Reference alone"
                )
            elif fit.gain >= MOTION_MIN_GAIN:
                transform, ratio, method = fit.transform, fit.similarity, MOTION_CORRECTED
                notes.append(f"moved against {ref_name} by {_motion(transform)}; corrected")
            else:
                ratio = fit.initial
            LOG.info(
                "%s onto %s: %s, %s %s",
                name,
                ref_name,
                method,
                MUTUAL_INFORMATION if by_mi else CORRELATION_RATIO,
                by_mi.similarity if by_mi else ratio,
            )
        data = resample(_data(volume), volume.affine, ref.affine, shape, transform=transform)
        aligned[name] = AlignedSequence(
            name,
            data,
            transform,
            method,
            ratio,
            tuple(notes),
            measure=MUTUAL_INFORMATION if by_mi else CORRELATION_RATIO,
            similarity=by_mi.similarity if by_mi else ratio,
        )
        warnings += [f"{name}: {n}" for n in notes]
    ordered: dict[str, AlignedSequence] = {
        s: aligned[s] for s in ("t1", "t1c", "t2", "flair") if s in aligned
    }
    ordered.update({s: a for s, a in aligned.items() if s not in ordered})
    return AlignedStudy(
        reference=ref_name,
        affine=ref.affine,
        shape=shape,
        sequences=ordered,
        seconds=time.perf_counter() - start,
        warnings=tuple(warnings),
    )


def voxel_volume_ml(affine: npt.ArrayLike) -> float:
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
