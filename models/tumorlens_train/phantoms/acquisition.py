"""Scanner effects applied per sequence: bias field, thick-slice 2D acquisition, Rician noise.

Clinical T2/FLAIR (and often T1) are 2D stacks of 4-6 mm slices; models trained only on crisp
isotropic data degrade on them. A thick-slice acquisition is simulated by blurring with the slice
profile, keeping one sample per slice, adding noise at that resolution and interpolating back
onto the working grid, which is what a viewer or our preprocessing does with such a series.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .fields import FloatArray, smooth_noise

_AXIS_NAMES = ("sagittal", "coronal", "axial")  # slice-normal along x, y, z (RAS)


@dataclass(frozen=True)
class SliceStack:
    axis: int  # array axis the slices are stacked along
    thickness_mm: float
    gap_mm: float
    offset: float  # position of the first slice centre, in output voxels


@dataclass(frozen=True)
class Acquisition:
    bias_sd: float  # std of the log bias field
    noise: float  # Rician sigma relative to white-matter T1 signal (= 1)
    scale: float  # arbitrary scanner units per relative signal unit
    slices: SliceStack | None

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        if self.slices is not None:
            out["slices"]["orientation"] = _AXIS_NAMES[self.slices.axis]
        return out


def sample_acquisition(
    rng: np.random.Generator, spacing: float, thick_slice_prob: float
) -> Acquisition:
    """Random scanner settings for one sequence."""
    slices = None
    if rng.random() < thick_slice_prob:
        axis = int(rng.choice([2, 1, 0], p=[0.7, 0.2, 0.1]))
        thickness = float(max(rng.uniform(3.0, 6.0), spacing))
        gap = float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.5)]))
        step = (thickness + gap) / spacing
        slices = SliceStack(axis, thickness, gap, float(rng.uniform(0.0, step)))
    return Acquisition(
        bias_sd=float(rng.uniform(0.0, 0.18)),
        noise=float(rng.uniform(0.01, 0.045)),
        scale=float(rng.uniform(400.0, 1500.0)),
        slices=slices,
    )


def _rician(image: FloatArray, sigma: float, rng: np.random.Generator) -> FloatArray:
    """Magnitude of a complex signal with Gaussian noise in both channels."""
    s = np.float32(sigma)
    real = image + s * rng.standard_normal(image.shape, dtype=np.float32)
    imag = s * rng.standard_normal(image.shape, dtype=np.float32)
    return np.asarray(np.sqrt(real * real + imag * imag), dtype=np.float32)


def _linear_weights(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour index and weight for linear interpolation at ``positions`` in [0, n-1]."""
    pos = np.clip(positions, 0.0, n - 1.0)
    lower = np.minimum(np.floor(pos).astype(int), max(n - 2, 0))
    return lower, (pos - lower).astype(np.float32)


def _lerp(volume: FloatArray, axis: int, positions: np.ndarray) -> FloatArray:
    n = volume.shape[axis]
    if n == 1:
        return np.repeat(volume, len(positions), axis=axis)
    lower, w = _linear_weights(positions, n)
    shape = [1, 1, 1]
    shape[axis] = len(positions)
    w = w.reshape(shape)
    out = volume.take(lower, axis=axis) * (1 - w) + volume.take(lower + 1, axis=axis) * w
    return np.asarray(out, dtype=np.float32)


def acquire(
    image: FloatArray, acq: Acquisition, spacing: float, rng: np.random.Generator
) -> FloatArray:
    """Apply bias, slice stacking and noise; returns the image in scanner units."""
    out = image * np.exp(acq.bias_sd * smooth_noise(rng, image.shape, 3))
    if acq.slices is None:
        out = _rician(out, acq.noise, rng)
    else:
        st = acq.slices
        axis = st.axis
        n = out.shape[axis]
        sigma = st.thickness_mm / 2.355 / spacing  # slice profile FWHM = thickness
        blurred = ndi.gaussian_filter1d(out, sigma, axis=axis, mode="nearest")
        step = (st.thickness_mm + st.gap_mm) / spacing
        centres = np.arange(st.offset, n - 1 + 1e-6, step)
        stack = _rician(_lerp(blurred, axis, centres), acq.noise, rng)
        # Back onto the working grid: slice index of every output position.
        slice_pos = (np.arange(n) - st.offset) / step
        out = _lerp(stack, axis, slice_pos)
    return (out * np.float32(acq.scale)).astype(np.float32)
