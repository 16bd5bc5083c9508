"""The 2D tumour-type classifier over a study's post-contrast slices, as one study opinion.

The classifier was trained on single 2D slices (glioma, meningioma, no tumour, pituitary). A
study has many slices, most of them without tumour, so the slice probabilities are pooled:

* tumour evidence of a slice = 1 - p(no tumour); the study's tumour probability is the mean
  evidence of its ``TOP_SLICES`` most convincing slices (a small tumour shows on few slices);
* the split among the tumour types is the evidence-weighted mean of the slices' tumour-type
  shares, so slices far from the tumour count little.

Slices are those of the post-contrast series whose brain area is at least ``MIN_BRAIN_FRACTION``
of the largest: the ends of the stack (skull base, vertex) look like nothing in the training set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from tumorlens.inference.card import resolve_model
from tumorlens.inference.preprocess import preprocess_image
from tumorlens.inference.preprocess3d import softmax
from tumorlens.inference.session import create_session

NO_TUMOUR: Final = "notumor"
TOP_SLICES: Final = 3
MIN_BRAIN_FRACTION: Final = 0.4
BATCH: Final = 32


@dataclass(frozen=True)
class SliceOpinion:
    """Study-level probabilities by card label name, and what they rest on."""

    probabilities: dict[str, float]
    slices: tuple[int, ...]  # slice indices along the series' normal that were classified
    seconds: float


def window_to_image(plane: npt.NDArray[np.float32]) -> Image.Image:
    """A slice's stored values -> an 8-bit grey image like the training JPEGs (0.5-99.5 %)."""
    low, high = np.percentile(plane, (0.5, 99.5))
    scaled = np.clip((plane - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 255.0
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def pool(probs: npt.NDArray[np.float32], labels: tuple[str, ...]) -> dict[str, float]:
    """Slice probabilities ``(S, K)`` -> study probabilities (module docstring)."""
    if NO_TUMOUR not in labels:
        mean = probs.mean(axis=0)
        return {name: float(p) for name, p in zip(labels, mean / mean.sum(), strict=True)}
    k_none = labels.index(NO_TUMOUR)
    evidence = 1.0 - probs[:, k_none]
    top = np.sort(evidence)[::-1][:TOP_SLICES]
    p_tumour = float(top.mean())
    tumour_idx = [k for k in range(len(labels)) if k != k_none]
    shares = probs[:, tumour_idx] / np.maximum(evidence, 1e-6)[:, None]
    weights = evidence / max(float(evidence.sum()), 1e-6)
    split = (shares * weights[:, None]).sum(axis=0)
    split = split / max(float(split.sum()), 1e-6)
    out = {labels[k_none]: 1.0 - p_tumour}
    for k, share in zip(tumour_idx, split, strict=True):
        out[labels[k]] = p_tumour * float(share)
    return out


class SliceClassifier:
    """The 2D model (ONNX + card), loaded once per worker process."""

    def __init__(self, model: str | Path, models_dir: Path, threads: int = 0) -> None:
        self.path, self.card = resolve_model(model, models_dir)
        self.session = create_session(self.path, threads=threads)

    def classify(
        self, volume: npt.NDArray[np.float32], brain: npt.NDArray[np.uint8] | None
    ) -> SliceOpinion:
        """``volume`` (columns, rows, slices) as stored; ``brain`` on the same grid."""
        started = time.perf_counter()
        n = volume.shape[2]
        if brain is not None and brain.any():
            area = np.count_nonzero(brain, axis=(0, 1)).astype(np.float64)
            chosen = np.flatnonzero(area >= MIN_BRAIN_FRACTION * area.max())
        else:
            chosen = np.arange(n // 4, max(n // 4 + 1, (3 * n) // 4))
        size = self.card.input_size
        arrays = [
            preprocess_image(window_to_image(volume[:, :, int(k)].T), size, f"slice {k}")
            for k in chosen
        ]
        logits = []
        for start in range(0, len(arrays), BATCH):
            (out,) = self.session.run(
                ["logits"], {self.card.input_name: np.stack(arrays[start : start + BATCH])}
            )
            logits.append(np.asarray(out, dtype=np.float32))
        probs = softmax(np.concatenate(logits), axis=1)
        return SliceOpinion(
            probabilities=pool(probs, self.card.label_names),
            slices=tuple(int(k) for k in chosen),
            seconds=time.perf_counter() - started,
        )
