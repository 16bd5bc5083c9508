"""Dural venous sinuses: enhancing blood at the brain's edge that is not tumour.

On post-contrast T1 the superior sagittal sinus (midline, under the vertex, widening from
front to back) and the transverse sinuses (from the torcula round the occipital bone) are as
bright as enhancing tumour and lie inside the brain mask's margin. Phantoms without them
taught 0.4.0/0.5.0 that anything enhancing at the edge is tumour (a meningioma is dural-based
and enhances too): both labelled the sagittal sinus of TCGA-FG-6692. Here the sinuses are a
background class (label 0) laid inside the dura, in the space between brain and skull, with
flow-dependent signal: bright on T1c, dark to mid on T2 (flow void) and FLAIR.

Shapes are in atlas (MNI) millimetres, so they follow each phantom's deformation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .fields import FloatArray

#: Superior sagittal sinus: half-width (mm) at the front and at the torcula, its depth
#: under the dura (mm), and the frontal end (MNI y, mm).
SSS_HALF_WIDTH_MM = (3.5, 6.0)
SSS_DEPTH_MM = 7.0
SSS_FRONT_Y_MM = 40.0
#: Transverse sinuses: the plane they run in (MNI z at the torcula, rise per mm lateral),
#: half-height (mm), how far forward they reach (MNI y), and their depth under the dura.
TS_Z_MM = -8.0
TS_RISE = 0.15
TS_HALF_HEIGHT_MM = 4.0
TS_FRONT_Y_MM = -55.0
TS_DEPTH_MM = 6.0
#: Torcula (confluence of sinuses), where the SSS ends, MNI mm (y, z).
TORCULA_MM = (-100.0, 0.0)


def sample_sinuses(rng: np.random.Generator) -> dict[str, Any]:
    """Per-case T1c brightness of the sinus blood (x the base value) and its flow signal."""
    return {
        "t1ce_gain": float(rng.uniform(0.8, 1.25)),
        "flow_void": float(rng.uniform(0.0, 1.0)),  # 1: black on T2/FLAIR, 0: slow, grey
    }


def _ramp(distance: FloatArray, spacing: float) -> FloatArray:
    """Soft indicator of distance < 0 with a one-voxel partial-volume ramp."""
    return np.asarray(np.clip(0.5 - distance / spacing, 0.0, 1.0), dtype=np.float32)


def sinus_fraction(
    atlas_mm: FloatArray, envelope_sd: FloatArray, dura_offset_mm: float, spacing: float
) -> FloatArray:
    """Soft fraction of dural sinus per voxel: the superior sagittal and transverse sinuses,
    each a band under the dura (``envelope_sd`` between the dura and ``depth`` inside it)."""
    x, y, z = atlas_mm[0], atlas_mm[1], atlas_mm[2]
    under = envelope_sd - dura_offset_mm  # < 0 inside the dura
    # Superior sagittal sinus: from the frontal pole's top back to the torcula, above it.
    along = np.clip((SSS_FRONT_Y_MM - y) / (SSS_FRONT_Y_MM - TORCULA_MM[0]), 0.0, 1.0)
    half = SSS_HALF_WIDTH_MM[0] + (SSS_HALF_WIDTH_MM[1] - SSS_HALF_WIDTH_MM[0]) * along
    sss = (
        _ramp(np.abs(x) - half, spacing)
        * _ramp(-under - SSS_DEPTH_MM, spacing)
        * _ramp(y - SSS_FRONT_Y_MM, spacing)
        * _ramp(TORCULA_MM[1] - 4.0 - z, spacing)
    )
    # Transverse sinuses: the posterior rim of the tentorium's attachment, rising laterally.
    centre_z = TS_Z_MM + TS_RISE * np.abs(x)
    ts = (
        _ramp(np.abs(z - centre_z) - TS_HALF_HEIGHT_MM, spacing)
        * _ramp(-under - TS_DEPTH_MM, spacing)
        * _ramp(y - TS_FRONT_Y_MM, spacing)
    )
    inside = _ramp(under, spacing)
    out = np.clip(np.maximum(sss, ts), 0.0, 1.0) * inside
    return np.asarray(out, dtype=np.float32)


def sinus_signal(params: dict[str, Any]) -> np.ndarray:
    """Relative signal (t1, t1ce, t2, flair) of sinus blood for one case: gadolinium in the
    blood pool on T1c; fast flow darkens the others (flow void), slow flow leaves them grey."""
    void = float(params["flow_void"])
    return np.array(
        [
            0.75 - 0.45 * void,
            1.55 * float(params["t1ce_gain"]),
            0.9 - 0.75 * void,
            0.7 - 0.55 * void,
        ],
        dtype=np.float32,
    )
