"""Class activation maps from a GAP + linear head: ``CAM_k = sum_c W[k, c] * F[c]``.

The spatial mean of ``CAM_k`` plus ``b_k`` is the class logit, which the export checks.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def class_activation_maps(
    features: NDArray[np.float32], weights: NDArray[np.float32]
) -> NDArray[np.float32]:
    """``features [N, C, h, w]`` and ``weights [K, C]`` -> maps ``[N, K, h, w]``."""
    maps: NDArray[np.float32] = np.einsum("nchw,kc->nkhw", features, weights).astype(np.float32)
    return maps


def upsample(cam: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    """One ``[h, w]`` map -> ``[size, size]`` in 0..1 (negative evidence clipped), bilinear."""
    positive = np.maximum(cam, 0.0).astype(np.float32)
    peak = float(positive.max())
    scaled = positive / peak if peak > 0 else positive
    image = Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32).copy()
