"""Smooth random fields and resampling helpers used by the anatomy, tumour and contrast steps.

Smooth fields are built as a tensor product: random values on a coarse control grid are upsampled
with separable cubic B-spline weight matrices. That costs three small matrix products instead of a
full-volume Gaussian filter, which keeps one phantom within a CPU budget of about a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

FloatArray = npt.NDArray[np.float32]


def _bspline3(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Cubic B-spline kernel."""
    a = np.abs(t)
    out = np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, 0.0)
    return np.where((a >= 1) & (a < 2), (2 - a) ** 3 / 6, out)


@lru_cache(maxsize=64)
def upsample_matrix(n_out: int, n_ctrl: int) -> FloatArray:
    """Weights (n_out, n_ctrl) that interpolate ``n_ctrl`` control values onto ``n_out`` samples.

    Rows are normalised so that the edge samples, which see fewer control points, keep unit gain.
    """
    pos = np.linspace(0.0, n_ctrl - 1.0, n_out)
    weights = _bspline3(pos[:, None] - np.arange(n_ctrl)[None, :])
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights.astype(np.float32)


def upsample(coarse: npt.NDArray[np.floating], shape: Sequence[int]) -> FloatArray:
    """Smoothly upsample a small 3D control grid to ``shape``."""
    wx, wy, wz = (upsample_matrix(n, c) for n, c in zip(shape, coarse.shape, strict=True))
    a = np.tensordot(wx, coarse.astype(np.float32), axes=(1, 0))  # (nx, cy, cz)
    b = np.tensordot(a, wy, axes=(1, 1))  # (nx, cz, ny)
    return np.ascontiguousarray(np.tensordot(b, wz, axes=(1, 1)), dtype=np.float32)


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], n_ctrl: int | Sequence[int]
) -> FloatArray:
    """Zero-mean, unit-std random field whose wavelength is about ``shape / n_ctrl`` voxels."""
    ctrl = (n_ctrl,) * 3 if isinstance(n_ctrl, int) else tuple(n_ctrl)
    ctrl = tuple(max(2, c) for c in ctrl)
    field = upsample(rng.standard_normal(ctrl), shape)
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def sample(volume: FloatArray, index: FloatArray, order: int = 1) -> FloatArray:
    """Sample ``volume`` at voxel coordinates ``index`` (3, ...); edges extend (mode nearest).

    Extending the edge matters at the bottom of the template, where the brainstem is cut by the
    template's field of view and should continue into the neck rather than stop.
    """
    out = ndi.map_coordinates(
        volume, index, order=order, mode="nearest", output=np.float32, prefilter=False
    )
    return np.asarray(out, dtype=np.float32)


def crop_slices(
    mask: npt.NDArray[np.bool_], margin: int, shape: Sequence[int]
) -> tuple[slice, slice, slice] | None:
    """Bounding box of ``mask`` grown by ``margin`` voxels and clipped to ``shape``."""
    if not mask.any():
        return None
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(0, hits[0] - margin), min(shape[axis], hits[-1] + margin + 1)))
    return out[0], out[1], out[2]
