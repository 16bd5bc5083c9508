"""Tissue classes -> T1, T1c, T2 and FLAIR signal, with per-case randomised contrast.

Base values are relative signal (white matter T1 = 1) chosen from typical 1.5/3 T appearance:
T1 WM > GM > CSF, T2 CSF > GM > WM, FLAIR suppresses CSF and shows oedema brightest, T1c is T1
plus gadolinium in enhancing tumour. The per-case jitter (+-8 %) is smaller than every gap
between normal tissues, so those orderings hold in every phantom.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from .fields import FloatArray, crop_slices, smooth_noise
from .tumours import Compartment

SEQUENCES = ("t1", "t1ce", "t2", "flair")

#: Relative signal per class and sequence (t1, t1ce, t2, flair).
BASE_SIGNAL: dict[str, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 0.42, 0.48),
    "gm": (0.68, 0.70, 0.56, 0.62),
    "csf": (0.22, 0.22, 1.00, 0.10),
    "extra_csf": (0.22, 0.24, 1.00, 0.10),
    "gland": (0.70, 1.40, 0.55, 0.60),  # normal pituitary enhances avidly
    # tumour compartments
    "necrosis": (0.30, 0.30, 0.88, 0.45),
    "non_enhancing": (0.52, 0.53, 0.82, 0.86),
    "cyst": (0.26, 0.27, 0.95, 0.30),
    "enhancing": (0.62, 1.45, 0.62, 0.75),
    "extra_axial": (0.66, 1.50, 0.58, 0.64),
    "adenoma": (0.64, 1.12, 0.60, 0.62),
    "oedema": (0.56, 0.57, 0.80, 0.95),
    # head layers
    "inner_table": (0.04, 0.04, 0.04, 0.04),
    "diploe": (0.90, 0.92, 0.55, 0.62),
    "outer_table": (0.04, 0.04, 0.04, 0.04),
    "muscle": (0.55, 0.58, 0.35, 0.40),
    "fat": (1.35, 1.35, 0.85, 0.90),
    "skin": (0.70, 0.72, 0.55, 0.60),
}

COMPARTMENT_CLASS: dict[Compartment, str] = {
    Compartment.NECROSIS: "necrosis",
    Compartment.NON_ENHANCING: "non_enhancing",
    Compartment.CYST: "cyst",
    Compartment.ENHANCING: "enhancing",
    Compartment.EXTRA_AXIAL: "extra_axial",
    Compartment.OEDEMA: "oedema",
    Compartment.ADENOMA: "adenoma",
}

#: Std of multiplicative texture per class: necrotic/enhancing glioma is heterogeneous,
#: meningioma and normal tissue are not.
TEXTURE: dict[str, float] = {
    "wm": 0.02,
    "gm": 0.025,
    "necrosis": 0.12,
    "non_enhancing": 0.06,
    "cyst": 0.03,
    "enhancing": 0.15,
    "extra_axial": 0.04,
    "adenoma": 0.04,
    "oedema": 0.07,
}

Contrast = dict[str, npt.NDArray[np.float32]]  # class -> signal per sequence (4,)


def sample_contrast(rng: np.random.Generator, jitter: float = 0.08) -> Contrast:
    """Per-case signal table: every base value scaled independently by 1 +- ``jitter``."""
    return {
        name: (np.asarray(base) * rng.uniform(1 - jitter, 1 + jitter, size=4)).astype(np.float32)
        for name, base in BASE_SIGNAL.items()
    }


#: Compartments whose T2/FLAIR hyperintensity (and T1 hypointensity) varies most between real
#: patients: a low-grade glioma can be barely brighter than grey matter on FLAIR.
SOFTENED = ("non_enhancing", "oedema")


def soften_lesion_contrast(contrast: Contrast, conspicuity: float) -> Contrast:
    """``contrast`` with :data:`SOFTENED` classes moved towards white matter's signal:
    ``wm + conspicuity * (signal - wm)`` per sequence (1: unchanged, 0: invisible).

    Why: with the base table every phantom's non-enhancing tumour is ~1.8x white matter on
    FLAIR and T2 (z ~2.8 in the brain), while the real lower-grade glioma we have reads z ~1.9;
    a model that only ever saw marked lesions learns to ignore subtle ones.
    """
    if not 0.0 <= conspicuity <= 1.0:
        raise ValueError(f"conspicuity must be in [0, 1], got {conspicuity}")
    out = dict(contrast)
    wm = contrast["wm"]
    for name in SOFTENED:
        out[name] = (wm + np.float32(conspicuity) * (contrast[name] - wm)).astype(np.float32)
    return out


#: Highest T1c gain of :func:`t1ce_uptake`: non-enhancing tissue stays below enhancing tumour.
MAX_T1CE_UPTAKE = 1.5


def t1ce_uptake(contrast: Contrast, gain: float) -> Contrast:
    """``contrast`` with the T1c signal of :data:`SOFTENED` classes multiplied by ``gain``.

    Why: the base table gives non-enhancing tumour the same signal on T1c as on T1, but the
    real lower-grade glioma we have reads ~0.5 z brighter on T1c than on T1 with no focal
    enhancement beyond normal brain's (``lesion_contrast --case``'s ``t1ce_minus_t1``); a
    model that never saw that takes any T1c excess for enhancement. Gains up to
    :data:`MAX_T1CE_UPTAKE` keep them below enhancing tumour (T1c 1.45 against T1 0.62 in the
    base table).
    """
    if not 1.0 <= gain <= MAX_T1CE_UPTAKE:
        raise ValueError(f"T1c uptake gain must be in [1, {MAX_T1CE_UPTAKE:g}], got {gain}")
    out = dict(contrast)
    t1ce = SEQUENCES.index("t1ce")
    for name in SOFTENED:
        signal = contrast[name].copy()
        signal[t1ce] *= np.float32(gain)
        out[name] = signal
    return out


def _mix(fractions: Mapping[str, FloatArray], contrast: Contrast) -> FloatArray:
    """Sum of fraction x signal, all sequences at once: (4, X, Y, Z)."""
    names = list(fractions)
    stack = np.stack([fractions[n] for n in names]).reshape(len(names), -1)
    table = np.stack([contrast[n] for n in names])  # (K, 4)
    shape = next(iter(fractions.values())).shape
    return (table.T @ stack).reshape((4, *shape)).astype(np.float32)


def synthesise(
    healthy: Mapping[str, FloatArray],
    compartments: npt.NDArray[np.uint8],
    contrast: Contrast,
    rng: np.random.Generator,
    spacing: float,
) -> dict[str, FloatArray]:
    """Noise-free images for every sequence.

    ``healthy`` maps class names (wm, gm, csf, extra_csf and head layers) to volume fractions;
    tumour compartments replace them where present, with a half-voxel partial-volume blur.
    """
    shape = compartments.shape
    ctrl = tuple(max(2, round(n * spacing / 8.0)) for n in shape)
    texture = smooth_noise(rng, shape, ctrl)
    textured = {
        n: f * (1.0 + TEXTURE[n] * texture) if n in TEXTURE else f for n, f in healthy.items()
    }
    images = _mix(textured, contrast)
    crop = crop_slices(compartments > 0, 3, shape)
    if crop is not None:
        local = compartments[crop]
        tex = texture[crop]
        fractions: dict[str, FloatArray] = {}
        for comp, name in COMPARTMENT_CLASS.items():
            hit = local == comp
            if hit.any():
                soft = ndi.gaussian_filter(hit.astype(np.float32), sigma=0.5)
                fractions[name] = soft * (1.0 + TEXTURE[name] * tex)
        if fractions:
            total = ndi.gaussian_filter((local > 0).astype(np.float32), sigma=0.5)
            tumour = _mix(fractions, contrast)
            region = images[(slice(None), *crop)]
            region *= 1.0 - total
            region += tumour
    return {seq: images[i] for i, seq in enumerate(SEQUENCES)}
