"""Synthetic NIfTI head volumes in the BraTS grid (240 x 240 x 155, 1 mm), for make-study."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SEQUENCES = ("t1", "t1c", "t2", "flair")
# Rough tissue intensities per sequence: (background, "brain", "lesion").
_CONTRAST = {
    "t1": (0, 600, 350),
    "t1c": (0, 620, 900),
    "t2": (0, 500, 1100),
    "flair": (0, 450, 1000),
}


def synthetic_head(out_dir: Path, shape: tuple[int, int, int] = (240, 240, 155)) -> dict[str, Path]:
    """Four co-registered volumes: an ellipsoid 'head' with a bright 'lesion', LPS-like affine."""
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cx, cy, cz = (s / 2 for s in shape)
    head = ((x - cx) / 80) ** 2 + ((y - cy) / 100) ** 2 + ((z - cz) / 70) ** 2 <= 1
    lesion = ((x - cx - 25) / 15) ** 2 + ((y - cy + 10) / 15) ** 2 + ((z - cz) / 12) ** 2 <= 1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # BraTS files: LPS-ish voxel axes, 1 mm
    affine[:3, 3] = [120.0, 120.0, -77.0]
    rng = np.random.default_rng(7)
    paths = {}
    for sequence in SEQUENCES:
        background, brain, bright = _CONTRAST[sequence]
        volume = np.full(shape, background, dtype=np.float32)
        volume[head] = brain
        volume[lesion & head] = bright
        volume += rng.normal(0, 15, shape).astype(np.float32) * head
        path = out_dir / f"{sequence}.nii.gz"
        nib.save(nib.Nifti1Image(np.clip(volume, 0, None).astype(np.int16), affine), path)
        paths[sequence] = path
    return paths
