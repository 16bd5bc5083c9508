"""Per-case anatomy: a random smooth deformation of the template plus tumour mass effect.

Every output voxel gets an "atlas" coordinate (MNI mm) saying where in the template it comes from.
Tumours are drawn in atlas coordinates *before* mass effect, and tissue is sampled *after* it, so
a tumour at atlas point c sits where tissue used to be and that tissue ends up pushed outward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .fields import FloatArray, sample, smooth_noise
from .template import GRID_CENTRE_MM, PITUITARY_GLAND_MM, SELLA_MNI_MM, Grid, Template


@dataclass(frozen=True)
class MassEffect:
    """Insert a sphere of tissue-free volume of ``radius_mm`` at ``centre_mm`` (atlas space)."""

    centre_mm: tuple[float, float, float]
    radius_mm: float


@dataclass(frozen=True)
class Tissue:
    """Healthy tissue maps on the output grid (after deformation and mass effect)."""

    gm: FloatArray
    wm: FloatArray
    csf: FloatArray
    brain: FloatArray  # gm + wm + csf inside the brain mask, soft

    def as_dict(self) -> dict[str, FloatArray]:
        return {"gm": self.gm, "wm": self.wm, "csf": self.csf, "brain": self.brain}


def _rotation(rng: np.random.Generator, max_deg: float) -> FloatArray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float32)


def random_deformation(
    grid: Grid,
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 7.0,
    scale_mean: float = 0.05,
    scale_sd: float = 0.04,
    shift_mm: float = 4.0,
    elastic_mm: tuple[float, float] = (1.0, 3.0),
) -> tuple[FloatArray, dict[str, Any]]:
    """Atlas coordinates (3, X, Y, Z) of every output voxel: small affine plus smooth warp.

    The warp is a B-spline field on a ~30 mm control grid so it changes gyral and ventricle
    shapes without folding; the affine mimics head size and positioning differences. Atlas
    coordinates are stretched by ``exp(N(scale_mean, scale_sd))``: the MNI 2009a brain (1890 mL
    with its CSF) is larger than most adults', so a mean of 5 % makes the typical phantom
    brain ~1630 mL (+-2 sd: ~1290-2060 mL), inside the runtime brain extraction's plausible
    range; centred on 1, a third of the phantoms came out above it.
    """
    rot = _rotation(rng, max_rotation_deg)
    scale = np.float32(np.exp(rng.normal(scale_mean, scale_sd))) * np.exp(
        rng.normal(0.0, scale_sd / 2, size=3)
    ).astype(np.float32)
    shift = rng.uniform(-shift_mm, shift_mm, size=3).astype(np.float32)
    amplitude = float(rng.uniform(*elastic_mm))
    centre = np.asarray(GRID_CENTRE_MM, dtype=np.float32).reshape(3, 1, 1, 1)

    matrix = rot * scale[None, :]
    # The grid is separable, so the affine part is a sum of three broadcast axis terms.
    axes = [grid.axis_mm(a) - centre[a, 0, 0, 0] for a in range(3)]
    axes = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    atlas = np.empty((3, *grid.shape), dtype=np.float32)
    for i in range(3):
        atlas[i] = matrix[i, 0] * axes[0] + matrix[i, 1] * axes[1] + matrix[i, 2] * axes[2]
        atlas[i] += centre[i, 0, 0, 0] + shift[i]
    n_ctrl = tuple(max(3, round(e / 30.0)) for e in (s * grid.spacing for s in grid.shape))
    for axis in range(3):
        atlas[axis] += amplitude * smooth_noise(rng, grid.shape, n_ctrl)
    params = {
        "rotation_matrix": np.round(rot, 4).tolist(),
        "scale": np.round(scale, 4).tolist(),
        "shift_mm": np.round(shift, 2).tolist(),
        "elastic_mm": round(amplitude, 2),
    }
    return atlas.astype(np.float32, copy=False), params


def apply_mass_effect(atlas: FloatArray, effects: list[MassEffect]) -> FloatArray:
    """Source coordinates after pushing tissue radially away from each effect's centre.

    Volume-preserving for an incompressible medium: the point at radius r came from radius
    (r^3 - R^3)^(1/3), so the shift decays as R^3 / (3 r^2) and far tissue barely moves.
    """
    out = atlas.copy()
    for effect in effects:
        if effect.radius_mm <= 0:
            continue
        centre = np.asarray(effect.centre_mm, dtype=np.float32).reshape(3, 1, 1, 1)
        rel = out - centre
        r = np.sqrt((rel**2).sum(axis=0))
        r3 = r**3 - np.float32(effect.radius_mm) ** 3
        ratio = np.cbrt(np.maximum(r3, 0.0)) / np.maximum(r, 1e-3)
        out = centre + rel * ratio[None]
    return out


def sample_tissue(template: Template, source_mm: FloatArray) -> Tissue:
    """Template tissue maps resampled at the given atlas coordinates."""
    index = template.grid.to_index(source_mm)
    gm = sample(template.gm, index)
    wm = sample(template.wm, index)
    brain = np.clip(sample(template.brain, index), 0.0, 1.0)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return Tissue(gm=gm, wm=wm, csf=csf, brain=brain)


def sample_head_surfaces(template: Template, atlas_mm: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Signed distances (mm) to the intracranial envelope and the outer head surface.

    Sampled without mass effect: tumours push the brain, not the skull.
    """
    index = template.grid.to_index(atlas_mm)
    return sample(template.envelope_sd_mm, index), sample(template.head_sd_mm, index)


def pituitary_gland(source_mm: FloatArray, spacing: float) -> FloatArray:
    """Soft fraction of the normal pituitary gland, an ellipsoid in the sella.

    Evaluated on mass-effect source coordinates so an adenoma compresses the gland aside.
    """
    semi = np.asarray(PITUITARY_GLAND_MM, dtype=np.float32).reshape(3, 1, 1, 1)
    centre = np.asarray(SELLA_MNI_MM, dtype=np.float32).reshape(3, 1, 1, 1)
    q = np.sqrt((((source_mm - centre) / semi) ** 2).sum(axis=0))
    # (1 - q) times the mean semi-axis approximates the distance to the surface in mm.
    soft = np.clip((1.0 - q) * float(semi.mean()) / spacing + 0.5, 0.0, 1.0)
    return np.asarray(soft, dtype=np.float32)
