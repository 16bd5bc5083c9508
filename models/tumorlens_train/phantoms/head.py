"""Extra-cerebral layers around the brain: CSF space, skull (tables and diploe) and scalp.

Real clinical studies are full-head; skull-stripped BraTS data are not. The dura follows the
template's intracranial envelope and the skin a smoother outer head surface; scalp layers are
shells inside the skin, and everything between scalp and dura is bone: cortical tables next to
either side and marrow-filled diploe in between, which makes the skull base thick bone, as it is.
Boundaries get one-voxel partial-volume ramps and thicknesses vary smoothly over the head.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .fields import FloatArray, smooth_noise

HEAD_LAYERS = ("inner_table", "diploe", "outer_table", "muscle", "fat", "skin")


def sample_head(rng: np.random.Generator) -> dict[str, Any]:
    """Per-case layer thicknesses and surface offsets (mm)."""
    return {
        "dura_offset_mm": float(rng.uniform(-1.0, 1.5)),  # dura relative to the envelope
        "skin_offset_mm": float(rng.uniform(-3.0, 2.0)),  # skin relative to the head surface
        "inner_table": float(rng.uniform(1.2, 2.2)),
        "outer_table": float(rng.uniform(1.2, 2.2)),
        "muscle": float(rng.uniform(0.8, 2.0)),
        "fat": float(rng.uniform(1.5, 4.0)),
        "skin": float(rng.uniform(1.2, 2.2)),
    }


def _inside(sd: FloatArray, boundary: FloatArray | float, spacing: float) -> FloatArray:
    """Soft indicator of sd < boundary with a one-voxel partial-volume ramp."""
    return np.asarray(np.clip((boundary - sd) / spacing + 0.5, 0.0, 1.0), dtype=np.float32)


def intracranial_fraction(
    envelope_sd: FloatArray, params: dict[str, Any], spacing: float
) -> FloatArray:
    """Soft mask of the space inside the dura."""
    return _inside(envelope_sd, params["dura_offset_mm"], spacing)


def head_fractions(
    envelope_sd: FloatArray,
    head_sd: FloatArray,
    params: dict[str, Any],
    spacing: float,
    rng: np.random.Generator,
) -> dict[str, FloatArray]:
    """Volume fraction of every skull/scalp layer; what is left outside the skin is air."""
    shape = envelope_sd.shape
    # Scalp thickness varies by about +-25 % over the head.
    scale = np.exp(0.25 * smooth_noise(rng, shape, 4))
    intracranial = intracranial_fraction(envelope_sd, params, spacing)
    boundary = np.full(shape, params["skin_offset_mm"], dtype=np.float32)
    outer = _inside(head_sd, boundary, spacing)
    out: dict[str, FloatArray] = {}
    for name in ("skin", "fat", "muscle"):
        boundary = boundary - params[name] * scale
        inner = _inside(head_sd, boundary, spacing)
        out[name] = np.clip(outer - inner, 0.0, 1.0)
        outer = inner
    bone = np.clip(outer - intracranial, 0.0, 1.0)
    # Diploe: bone at least one table thickness from both the scalp and the dura.
    below_outer = _inside(head_sd, boundary - params["outer_table"], spacing)
    beyond_inner = 1.0 - _inside(
        envelope_sd, params["dura_offset_mm"] + params["inner_table"], spacing
    )
    out["diploe"] = bone * below_outer * beyond_inner
    cortical = bone - out["diploe"]
    # Split cortical bone by which surface is nearer, only for the signal table's bookkeeping.
    near_dura = (envelope_sd - params["dura_offset_mm"]) < (boundary - head_sd)
    out["inner_table"] = np.where(near_dura, cortical, 0.0).astype(np.float32)
    out["outer_table"] = np.where(near_dura, 0.0, cortical).astype(np.float32)
    return out
