"""Segmentation metrics: Dice and 95th-percentile Hausdorff distance (HD95) on boolean masks, and
the BraTS regions over internal labels (1 core, 2 oedema, 3 enhancing).

Conventions (as in the BraTS challenge): both masks empty -> Dice 1.0 and HD95 0.0; exactly one
empty -> Dice 0.0 and HD95 ``nan`` (undefined; callers count it instead of inventing a number).
HD95 uses surface voxels (the mask minus its erosion, 6-connectivity) and Euclidean distance
transforms with the voxel spacing: the 95th percentile of the symmetric set of
surface-to-surface distances (both directions pooled).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

BoolArray = NDArray[np.bool_]

#: Region -> internal labels it unites.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def region_mask(labels: NDArray[np.integer], region: str) -> BoolArray:
    mask: BoolArray = np.isin(labels, REGIONS[region])
    return mask


def dice(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """2|A∩B| / (|A| + |B|); 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {t.shape}")
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def surface(mask: BoolArray) -> BoolArray:
    """Voxels of ``mask`` with a 6-neighbour outside it (image border counts as outside)."""
    eroded = ndimage.binary_erosion(
        mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0
    )
    out: BoolArray = np.logical_and(mask, np.logical_not(eroded))
    return out


def surface_distances(
    a: BoolArray, b: BoolArray, spacing: Sequence[float] | NDArray[np.floating]
) -> NDArray[np.float64]:
    """Distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    sa, sb = surface(a), surface(b)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=tuple(float(s) for s in spacing))
    out: NDArray[np.float64] = np.asarray(dist_to_b, dtype=np.float64)[sa]
    return out


def hd95(
    pred: NDArray[np.bool_],
    truth: NDArray[np.bool_],
    spacing: Sequence[float] | NDArray[np.floating] = (1.0, 1.0, 1.0),
) -> float:
    """95th percentile of the pooled symmetric surface distances in mm."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {t.shape}")
    if p.ndim != len(spacing):
        raise ValueError("spacing needs one value per axis")
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("nan")
    distances = np.concatenate([surface_distances(p, t, spacing), surface_distances(t, p, spacing)])
    return float(np.percentile(distances, 95))
