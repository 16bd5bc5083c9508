"""From the model's label map on the reference grid to what the report states about it.

The label map here is on the aligned study's grid (voxel ``(column, row, slice)`` of the
reference series, RAS affine). Cleaning:

* labels further than ``BRAIN_MARGIN_MM`` from the brain mask are dropped (orbits, scalp,
  neck: the model never saw those as tumour; extra-axial meningiomas lie within the margin);
* whole-tumour connected components smaller than ``min_lesion_ml`` are dropped (speckle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from tumorlens.pipeline.grid import voxel_volume_ml
from tumorlens.writers.findings import Lesion, Measurements, Side

BRAIN_MARGIN_MM: Final = 8.0
# A lesion with more than ONE_SIDE_SHARE of its volume on one side of the mid-sagittal plane
# is on that side; one on both sides is midline when at least MIDLINE_SHARE of it lies within
# MIDLINE_MM of the plane (pituitary, corpus callosum), else bilateral. The tumour is on the
# side of its lateral lesions (midline ones aside), bilateral when they are on both sides.
ONE_SIDE_SHARE: Final = 0.9
MIDLINE_MM: Final = 8.0
MIDLINE_SHARE: Final = 0.25
LPS_FROM_RAS: Final = np.diag([-1.0, -1.0, 1.0])

LabelVolume = npt.NDArray[np.uint8]
Affine = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Cleaning:
    removed_outside_brain_ml: float
    removed_small_ml: float
    components_removed: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "removed_outside_brain_ml": round(self.removed_outside_brain_ml, 3),
            "removed_small_ml": round(self.removed_small_ml, 3),
            "components_removed": self.components_removed,
        }


def _structure() -> npt.NDArray[np.bool_]:
    structure: npt.NDArray[np.bool_] = ndimage.generate_binary_structure(3, 3)
    return structure  # 26-connected: thick slices touch diagonally


def clean_labels(
    labels: LabelVolume,
    affine: Affine,
    brain: npt.NDArray[np.uint8] | None,
    min_lesion_ml: float,
) -> tuple[LabelVolume, Cleaning]:
    """Labels kept near the brain and in components of at least ``min_lesion_ml``."""
    out = labels.copy()
    voxel_ml = voxel_volume_ml(affine)
    outside_ml = 0.0
    if brain is not None and brain.any() and out.any():
        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        # The distance map only where there are labels: their bounding box grown by the margin
        # holds every brain voxel within the margin of them (a whole 240x240x155 map costs s).
        grow = np.ceil(BRAIN_MARGIN_MM / zooms).astype(int) + 1
        idx = np.argwhere(out > 0)
        lo = np.maximum(idx.min(axis=0) - grow, 0)
        hi = np.minimum(idx.max(axis=0) + grow + 1, out.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        if brain[box].any():
            distance = ndimage.distance_transform_edt(brain[box] == 0, sampling=zooms)
            far = (distance > BRAIN_MARGIN_MM) & (out[box] > 0)
        else:
            far = out[box] > 0
        outside_ml = float(far.sum()) * voxel_ml
        out[box][far] = 0
    components, count = ndimage.label(out > 0, structure=_structure())
    small_ml, removed = 0.0, 0
    if count:
        sizes = np.bincount(components.ravel())[1:] * voxel_ml
        small = np.flatnonzero(sizes < min_lesion_ml) + 1
        if small.size:
            drop = np.isin(components, small)
            small_ml = float(drop.sum()) * voxel_ml
            removed = int(small.size)
            out[drop] = 0
    return out, Cleaning(outside_ml, small_ml, removed)


def _side(x: npt.NDArray[np.float64]) -> Side:
    """The side of one lesion from its voxels' distances to the mid-sagittal plane (mm)."""
    right_share = float(np.mean(x > 0))
    if right_share >= ONE_SIDE_SHARE:
        return Side.RIGHT
    if right_share <= 1.0 - ONE_SIDE_SHARE:
        return Side.LEFT
    if float(np.mean(np.abs(x) <= MIDLINE_MM)) >= MIDLINE_SHARE:
        return Side.MIDLINE
    return Side.BILATERAL


def _centroid_lps(ras: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """Mean of RAS points as LPS patient coordinates (mm), to 0.01 mm."""
    lps = LPS_FROM_RAS @ ras.mean(axis=0)
    return (round(float(lps[0]), 2), round(float(lps[1]), 2), round(float(lps[2]), 2))


def _lesion(
    values: LabelVolume,
    index: npt.NDArray[np.float64],
    ras: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
    voxel_ml: float,
) -> Lesion:
    """One component from its voxels' labels, grid indices, RAS mm and mid-plane distances."""
    counts = np.bincount(values, minlength=4)
    return Lesion(
        volumes_ml={k: float(counts[k]) * voxel_ml for k in (1, 2, 3) if counts[k]},
        side=_side(x),
        centroid_lps=_centroid_lps(ras),
        slices=(int(index[:, 2].min()) + 1, int(index[:, 2].max()) + 1),
    )


def measure(labels: LabelVolume, affine: Affine, subject_to_mni: Affine | None) -> Measurements:
    """Volumes per label, lesion count, side and centroid of a cleaned label map, and the same
    per lesion (26-connected component), largest first."""
    voxel_ml = voxel_volume_ml(affine)
    counts = np.bincount(labels.ravel(), minlength=4)
    volumes = {k: float(counts[k]) * voxel_ml for k in (1, 2, 3) if counts[k]}
    tumour = labels > 0
    if not tumour.any():
        return Measurements(volumes, 0, Side.MIDLINE, None)
    components, lesions = ndimage.label(tumour, structure=_structure())
    idx = np.argwhere(tumour).astype(np.float64)
    ras = idx @ affine[:3, :3].T + affine[:3, 3]
    # Right (+x in RAS and MNI) or left of the mid-sagittal plane: in MNI space when the brain
    # was placed there (a turned head has no mid-sagittal plane at x = 0), else scanner RAS.
    if subject_to_mni is not None:
        x = ras @ subject_to_mni[0, :3] + subject_to_mni[0, 3]
    else:
        x = ras[:, 0]
    ids = components[tumour]
    values = labels[tumour]
    per_lesion = [
        _lesion(values[ids == k], idx[ids == k], ras[ids == k], x[ids == k], voxel_ml)
        for k in range(1, lesions + 1)
    ]
    sides = {lesion.side for lesion in per_lesion}
    lateral = sides & {Side.LEFT, Side.RIGHT}
    if Side.BILATERAL in sides or len(lateral) == 2:
        side = Side.BILATERAL
    elif lateral:
        side = lateral.pop()  # lesions on one side, maybe with midline ones
    else:
        side = Side.MIDLINE
    return Measurements(
        volumes_ml=volumes,
        lesion_count=int(lesions),
        lesions=tuple(sorted(per_lesion, key=lambda lesion: -lesion.whole_tumour_ml)),
        side=side,
        centroid_lps=_centroid_lps(ras),
    )
