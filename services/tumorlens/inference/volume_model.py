"""The 3D tumour model at run time: ONNX session + card, one study in, labels and types out.

One :class:`VolumeModel` per worker process (the session is the expensive part). Inputs are
``{sequence: (array, RAS affine)}`` in the model's sequence names (``t1``, ``t1ce``, ``t2``,
``flair``); outputs come back on a native grid the caller names (the reference series').
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from tumorlens.errors import VolumeError
from tumorlens.inference.preprocess3d import (
    Affine,
    Prepared,
    load_volume_card,
    preprocess_arrays,
    probabilities_to_native,
    resample_to,
    softmax,
)
from tumorlens.inference.refine import CORE, ENHANCING, BoundaryRefinement, refine_labels
from tumorlens.inference.session import create_session
from tumorlens.pipeline.registration import box_affine, grow_box, support_box

FEATURES_OUTPUT = "type_features"
SEG_CLASSES = ("background", "core", "oedema", "enhancing")
#: The card's ``postprocessing`` keys (written by the export, read here).
MIN_COMPONENT_ML, MIN_ENHANCING_ML = "min_tumour_component_ml", "min_enhancing_ml"
SEG_LOGIT_OFFSETS = "seg_logit_offsets"


@dataclass
class VolumePrediction:
    labels: NDArray[np.uint8]  # on the native grid, internal labels 0..3
    type_probs: NDArray[np.float32]  # (K,) in card label order
    seconds: float
    present: tuple[str, ...] = ()
    # Class activation map of the most probable type on the native grid, 0..1 (None when the
    # model exports no feature maps).
    activation: NDArray[np.float32] | None = None

    def hgg_probability(self, type_labels: Sequence[str]) -> float:
        """P(HGG) / (P(HGG) + P(LGG)): the grade among gliomas; 0.5 when neither is likely."""
        names = list(type_labels)
        hgg = float(self.type_probs[names.index("hgg")]) if "hgg" in names else 0.0
        lgg = float(self.type_probs[names.index("lgg")]) if "lgg" in names else 0.0
        return hgg / (hgg + lgg) if hgg + lgg > 0 else 0.5


class VolumeModel:
    """An ONNX 3D model with its card (sha256 checked when loaded)."""

    def __init__(
        self,
        model: str | Path,
        models_dir: Path,
        threads: int = 0,
    ) -> None:
        self.path, self.card = load_volume_card(model, models_dir)
        self.session = create_session(self.path, threads=threads)
        names = {o.name for o in self.session.get_outputs()}
        cam = self.card.raw.get("cam")
        self._cam: tuple[NDArray[np.float32], int] | None = None
        if FEATURES_OUTPUT in names and isinstance(cam, dict) and "weights" in cam:
            self._cam = (np.asarray(cam["weights"], dtype=np.float32), int(cam["stride_voxels"]))
        self.min_component_voxels = min_component_voxels(self.card.raw, self.card.grid.spacing)
        self.min_enhancing_voxels = min_enhancing_voxels(self.card.raw, self.card.grid.spacing)
        self.seg_logit_offsets = seg_logit_offsets(self.card.raw, self.path)
        self.refinement = BoundaryRefinement.from_card(self.card.raw, self.path)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def predict_arrays(
        self,
        images: Mapping[str, tuple[NDArray[Any], Affine]],
        native_affine: NDArray[np.float64],
        native_shape: Sequence[int],
        *,
        subject_to_mni: Affine | None = None,
        brain_mask: tuple[NDArray[Any], Affine] | None = None,
        activation: bool = True,
    ) -> VolumePrediction:
        started = time.perf_counter()
        want_cam = activation and self._cam is not None
        extra = ["type_logits", FEATURES_OUTPUT] if want_cam else ["type_logits"]
        probs, prepared, results = self.grid_probabilities(
            images, subject_to_mni=subject_to_mni, brain_mask=brain_mask, outputs=extra
        )
        type_probs = softmax(np.asarray(results[0])[0])
        labels = labels_on_native(
            probs,
            prepared.affine,
            native_affine,
            native_shape,
            refinement=self.refinement,
            images=images,
        )
        cam = None
        if want_cam:
            cam = self._activation(np.asarray(results[1])[0], int(np.argmax(type_probs)))
            cam = resample_to(cam, self._feature_affine(prepared), native_affine, native_shape)
            peak = float(cam.max(initial=0.0))
            cam = (np.clip(cam / peak, 0.0, 1.0) if peak > 0 else cam).astype(np.float32)
        return VolumePrediction(
            labels=labels,
            type_probs=type_probs,
            seconds=time.perf_counter() - started,
            present=prepared.present,
            activation=cam,
        )

    def grid_probabilities(
        self,
        images: Mapping[str, tuple[NDArray[Any], Affine]],
        *,
        subject_to_mni: Affine | None = None,
        brain_mask: tuple[NDArray[Any], Affine] | None = None,
        outputs: Sequence[str] = (),
    ) -> tuple[NDArray[np.float32], Prepared, list[Any]]:
        """The study on the model grid: class probabilities after the card's offsets and
        grid post-processing, the prepared input, and the model's other ``outputs``."""
        prepared = preprocess_arrays(
            images, self.card.grid, subject_to_mni=subject_to_mni, brain_mask=brain_mask
        )
        names = ["seg_logits", *outputs]
        results = self.session.run(names, {self.card.input_name: prepared.image[None]})
        probs = seg_probabilities(np.asarray(results[0])[0], self.seg_logit_offsets)
        probs = postprocess(probs, self.min_component_voxels, self.min_enhancing_voxels)
        return probs, prepared, list(results[1:])

    def _activation(self, features: NDArray[np.float32], k: int) -> NDArray[np.float32]:
        """CAM of class ``k`` on the feature grid; negative evidence clipped."""
        assert self._cam is not None
        weights, _ = self._cam
        cam = np.tensordot(weights[k], features, axes=(0, 0)).astype(np.float32)
        return np.maximum(cam, 0.0).astype(np.float32)

    def _feature_affine(self, prepared: Prepared) -> Affine:
        """Feature voxel -> RAS: model-grid affine scaled by the stride, centred on its block."""
        assert self._cam is not None
        stride = self._cam[1]
        scale = np.diag([float(stride)] * 3 + [1.0])
        shift = np.eye(4)
        shift[:3, 3] = (stride - 1) / 2.0
        return np.asarray(prepared.affine @ shift @ scale, dtype=np.float64)


def seg_logit_offsets(card: Mapping[str, Any], source: Path | str) -> NDArray[np.float32] | None:
    """The card's ``postprocessing.seg_logit_offsets``: one number per segmentation class
    (background, core, oedema, enhancing) added to the logits before the softmax; None: off.

    Why: a loss that weights tumour voxels up (0.7.0's cross-entropy x10) moves the argmax
    boundary outward; a constant offset on the background logit is the prior correction, chosen
    on a tuning set (``tumorlens_train.component_sweep --bg-offsets``).
    """
    post = card.get("postprocessing") or {}
    raw = post.get(SEG_LOGIT_OFFSETS)
    if raw is None:
        return None
    try:
        offsets = np.asarray([float(v) for v in raw], dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise VolumeError(
            f"{source}: postprocessing.{SEG_LOGIT_OFFSETS} is not numbers: {raw!r}"
        ) from exc
    if offsets.shape != (len(SEG_CLASSES),) or not np.all(np.isfinite(offsets)):
        raise VolumeError(
            f"{source}: postprocessing.{SEG_LOGIT_OFFSETS} needs {len(SEG_CLASSES)} finite "
            f"numbers ({', '.join(SEG_CLASSES)}), got {raw!r}"
        )
    return offsets


def seg_probabilities(
    logits: NDArray[np.float32], offsets: NDArray[np.float32] | None
) -> NDArray[np.float32]:
    """Class probabilities ``(K, X, Y, Z)`` from the model's segmentation logits, with the
    card's per-class offsets added first (None: plain softmax)."""
    if offsets is not None:
        logits = logits + offsets[:, None, None, None]
    probs: NDArray[np.float32] = softmax(logits, axis=0)
    return probs


def _postprocessing_voxels(card: Mapping[str, Any], key: str, spacing: float) -> int:
    post = card.get("postprocessing") or {}
    return ml_to_voxels(float(post.get(key, 0.0)), spacing)


def min_component_voxels(card: Mapping[str, Any], spacing: float) -> int:
    """The card's ``postprocessing.min_tumour_component_ml`` in model-grid voxels (0: none)."""
    return _postprocessing_voxels(card, MIN_COMPONENT_ML, spacing)


def min_enhancing_voxels(card: Mapping[str, Any], spacing: float) -> int:
    """The card's ``postprocessing.min_enhancing_ml`` in model-grid voxels (0: none)."""
    return _postprocessing_voxels(card, MIN_ENHANCING_ML, spacing)


def postprocess(
    probs: NDArray[np.float32], min_component_voxels: int, min_enhancing_voxels: int
) -> NDArray[np.float32]:
    """The card's post-processing on model-grid probabilities, in its order: small tumour
    components dropped, then a small total of enhancement merged into core (0: step off)."""
    if min_component_voxels > 1:
        probs = drop_small_tumour_components(probs, min_component_voxels)
    if min_enhancing_voxels > 0:
        probs = merge_small_enhancement(probs, min_enhancing_voxels)
    return probs


def ml_to_voxels(ml: float, spacing: float) -> int:
    """A component size in mL as whole voxels of a ``spacing`` mm grid, rounded up (0: none)."""
    return math.ceil(ml * 1000.0 / spacing**3) if ml > 0 else 0


def drop_small_tumour_components(
    probs: NDArray[np.float32], min_voxels: int
) -> NDArray[np.float32]:
    """Tumour components on the model grid (argmax not background, 26-connected) of fewer than
    ``min_voxels`` voxels become background (probability 1).

    Why: isolated specks of a few voxels are noise to a reader, each one a "lesion" in the
    findings, and on a healthy brain any one of them makes the whole study a false positive.
    The card names the size the held-out metrics were measured with.
    """
    tumour = np.argmax(probs, axis=0) != 0
    components, count = ndimage.label(tumour, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return probs
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False
    if not small.any():
        return probs
    drop = small[components]
    out = probs.copy()
    out[:, drop] = 0.0
    out[0, drop] = 1.0
    return out


def merge_small_enhancement(probs: NDArray[np.float32], min_voxels: int) -> NDArray[np.float32]:
    """When the study's enhancing tumour (argmax on the model grid, all components together)
    is smaller than ``min_voxels``, enhancing is relabelled as tumour core: its probability is
    added to necrotic/non-enhancing core everywhere, so no voxel comes out enhancing.

    Why: a few voxels of "enhancement" inside a non-enhancing glioma are the commonest error
    the model makes, and they turn a low-grade picture into an enhancing one (the BraTS
    post-processing of nnU-Net does the same). Every tumour-core voxel (core or enhancing) stays
    tumour core, and a few oedema voxels can join it where core and enhancing together outweigh
    oedema; the card names the threshold the held-out metrics were measured with.
    """
    enhancing = np.argmax(probs, axis=0) == ENHANCING
    count = int(enhancing.sum())
    if count == 0 or count >= min_voxels:
        return probs
    out = probs.copy()
    out[CORE] += out[ENHANCING]
    out[ENHANCING] = 0.0
    return out


def refinement_box(
    box: tuple[slice, ...],
    spacing: NDArray[np.float64],
    refinement: BoundaryRefinement,
    shape: Sequence[int],
) -> tuple[slice, ...]:
    """The tumour's support box grown by the refinement's sampling band: the discriminant
    needs confident background around the tumour."""
    margin = np.ceil(refinement.sample_band_mm / spacing).astype(int) + 1
    return grow_box(box, margin, tuple(int(n) for n in shape))


def labels_on_native(
    probs: NDArray[np.float32],
    grid: Affine,
    native_affine: NDArray[np.float64],
    native_shape: Sequence[int],
    *,
    refinement: BoundaryRefinement | None = None,
    images: Mapping[str, tuple[NDArray[Any], Affine]] | None = None,
) -> NDArray[np.uint8]:
    """:func:`probabilities_to_native`, computed only where a label can come out; with
    ``refinement`` (and the study's ``images``) the boundaries are then redrawn on the native
    grid by :func:`~tumorlens.inference.refine.refine_labels`.

    A native voxel interpolates (trilinearly) 8 model-grid voxels; when background is the most
    probable class at each of them it is at their weighted mean too, so only native voxels near
    grid voxels labelled as tumour can be tumour. Resampling just their bounding box saves
    most of the work on a 240 x 240 x 155 reference grid. Refinement works in that box grown by
    its sampling band, since it needs confident background around the tumour.
    """
    shape = tuple(int(n) for n in native_shape)
    out = np.zeros(shape, dtype=np.uint8)
    tumour = np.argmax(probs, axis=0) != 0
    box = support_box(tumour, np.linalg.inv(native_affine) @ grid, shape)
    if box is None:
        return out
    if refinement is None or not images:
        out[box] = probabilities_to_native(
            probs, grid, box_affine(native_affine, box), [b.stop - b.start for b in box]
        )
        return out
    spacing = np.sqrt((np.asarray(native_affine)[:3, :3] ** 2).sum(axis=0))
    box = refinement_box(box, spacing, refinement, shape)
    affine = box_affine(native_affine, box)
    box_shape = [b.stop - b.start for b in box]
    native_probs = np.stack([resample_to(p, grid, affine, box_shape) for p in probs])
    native_probs[0] += 1e-6  # outside the model grid: background, as probabilities_to_native
    features = np.stack(
        [resample_to(data, src, affine, box_shape) for data, src in images.values()]
    ).astype(np.float32)
    out[box] = refine_labels(native_probs.astype(np.float32), features, spacing, refinement)
    return out
