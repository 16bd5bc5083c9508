"""Volume preprocessing shared by training and the runtime (numpy/scipy/nibabel only, no torch).

The 3D models see every study on one fixed voxel grid:

* **grid**: RAS-aligned, isotropic ``spacing`` mm, ``shape`` voxels (default 3 mm, 64x80x64 =
  192x240x192 mm). Sequences are resampled by *physical coordinates* (each file's own affine,
  trilinear), so sequences with different resolutions or fields of view land on one grid.
* **placement** (``GridSpec.placement``, named by the model card), one of:

  - ``"head"`` (cards before 0.2.0): the grid is placed from the head foreground of the
    reference sequence (T1c, else FLAIR, else the first one present) in the study's own
    scanner space: centred on the foreground bounding box in x (left-right) and y
    (posterior-anterior), and in z its top sits ``top_margin_mm`` above the highest
    foreground voxel (vertex-anchored, so neck coverage does not move the brain).
  - ``"mni"``: the grid is fixed in MNI space (:func:`mni_grid`, centred on ``mni_centre_mm``;
    the default 3 mm 64x80x64 grid spans x -94.5..94.5, y -135.5..101.5, z -98.5..90.5 mm
    around the ICBM152 2009a brain mask's box x -71..71, y -107..73, z -85..81), and for a
    study it is ``inv(subject_to_mni) @ mni_grid``: the subject is resampled straight into
    MNI-aligned voxels. ``subject_to_mni`` comes from the pipeline's brain extraction
    (:func:`tumorlens.pipeline.brain_mask.extract_brain`); without it the model cannot run.

* **normalisation**: per channel z-score, values outside the region set to 0, clipped to
  +-``clip``; a missing sequence is an all-zero channel. The region is, for ``"head"``, the
  grid foreground (union of the channels' thresholded, hole-filled, largest connected
  component); for ``"mni"`` with a brain mask, the brain mask resampled to the grid and dilated
  by ``mask_dilation_mm`` (skull stripping: the model sees brains like BraTS data), the
  statistics taken over its voxels inside each sequence's field of view; for ``"mni"`` without
  a brain mask, the grid foreground as for ``"head"``.

The training code (``tumorlens_train.volumes``) imports these functions, so the runtime repeats
exactly what the model was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from tumorlens.errors import VolumeError
from tumorlens.pipeline.registration import resample

FloatArray = NDArray[np.float32]
Affine = NDArray[np.float64]

#: Model channel order (BraTS 2019/2020 file suffixes).
SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: Order in which sequences are tried as the placement reference.
REFERENCE_ORDER: tuple[str, ...] = ("t1ce", "flair", "t2", "t1")
#: Grid placements a card may name.
PLACEMENTS: tuple[str, ...] = ("head", "mni")
#: Centre of the MNI-placed grid (MNI mm): the middle of the ICBM152 2009a brain mask's
#: bounding box (x -71..71, y -107..73, z -85..81), 4 mm lower to keep the brainstem covered.
MNI_GRID_CENTRE_MM: tuple[float, float, float] = (0.0, -17.0, -4.0)


@dataclass(frozen=True)
class GridSpec:
    """The model grid: isotropic spacing (mm), shape (x, y, z) and placement rule
    (``"head"`` or ``"mni"``, see the module docstring)."""

    spacing: float = 3.0
    shape: tuple[int, int, int] = (64, 80, 64)
    top_margin_mm: float = 9.0
    clip: float = 5.0
    placement: str = "head"
    #: ``"mni"`` only: the grid centre in MNI mm, and the brain mask's dilation (mm).
    mni_centre_mm: tuple[float, float, float] = MNI_GRID_CENTRE_MM
    mask_dilation_mm: float = 4.0

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"grid placement {self.placement!r} not one of {PLACEMENTS}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spacing_mm": self.spacing,
            "shape": list(self.shape),
            "top_margin_mm": self.top_margin_mm,
            "clip": self.clip,
        }
        if self.placement != "head":  # old cards (and readers) know no placement field
            out["placement"] = self.placement
            out["mni_centre_mm"] = list(self.mni_centre_mm)
            out["mask_dilation_mm"] = self.mask_dilation_mm
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GridSpec:
        shape = tuple(int(v) for v in data["shape"])
        if len(shape) != 3:
            raise ValueError("grid shape must have 3 values")
        centre = tuple(float(v) for v in data.get("mni_centre_mm", MNI_GRID_CENTRE_MM))
        if len(centre) != 3:
            raise ValueError("grid mni_centre_mm must have 3 values")
        return cls(
            spacing=float(data["spacing_mm"]),
            shape=(shape[0], shape[1], shape[2]),
            top_margin_mm=float(data.get("top_margin_mm", 9.0)),
            clip=float(data.get("clip", 5.0)),
            placement=str(data.get("placement", "head")),
            mni_centre_mm=(centre[0], centre[1], centre[2]),
            mask_dilation_mm=float(data.get("mask_dilation_mm", 4.0)),
        )


@dataclass
class Prepared:
    """One study on the model grid."""

    image: FloatArray  # (C, X, Y, Z) float32, channels in SEQUENCES order
    affine: Affine  # model grid voxel -> RAS mm
    present: tuple[str, ...]  # sequences that were given (others are zeros)
    foreground: NDArray[np.bool_]  # (X, Y, Z)
    info: dict[str, Any] = field(default_factory=dict)


def load_nifti(path: Path) -> tuple[FloatArray, Affine]:
    """A 3D image as float32 plus its voxel->RAS affine; 4D files with one volume are squeezed."""
    try:
        img: Any = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for bad files
        raise VolumeError(f"cannot read {path}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D image, got shape {data.shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(f"{path}: unusable affine")
    return np.nan_to_num(data, copy=False), affine


def foreground_mask(volume: FloatArray, fraction: float = 0.08) -> NDArray[np.bool_]:
    """Head/brain foreground: above ``fraction`` of the 99th percentile of positive values,
    holes filled, largest connected component."""
    positive = volume[volume > 0]
    if positive.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    threshold = fraction * float(np.percentile(positive, 99))
    mask = volume > threshold
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(volume.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    filled: NDArray[np.bool_] = ndimage.binary_fill_holes(largest).astype(bool)
    return filled


def grid_affine(
    spec: GridSpec, reference: FloatArray, reference_affine: Affine
) -> tuple[Affine, dict[str, Any]]:
    """Place the model grid on a study (see module docstring); returns (affine, info)."""
    mask = foreground_mask(reference)
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise VolumeError("reference sequence has no foreground")
    # Bounding box corners in voxel space -> world; take the extremes.
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array(
        [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    world = (reference_affine @ corners.T).T[:, :3]
    wmin, wmax = world.min(axis=0), world.max(axis=0)
    extent = np.asarray(spec.shape, dtype=np.float64) * spec.spacing
    centre = (wmin + wmax) / 2.0
    centre[2] = wmax[2] + spec.top_margin_mm - extent[2] / 2.0
    origin = centre - (np.asarray(spec.shape, dtype=np.float64) - 1) * spec.spacing / 2.0
    affine = np.diag([spec.spacing, spec.spacing, spec.spacing, 1.0])
    affine[:3, 3] = origin
    info = {
        "foreground_bbox_mm": [wmin.round(1).tolist(), wmax.round(1).tolist()],
        "grid_origin_mm": origin.round(2).tolist(),
    }
    return affine, info


def mni_grid(spec: GridSpec) -> Affine:
    """Model grid voxel -> MNI mm for ``"mni"`` placement (centred on ``spec.mni_centre_mm``)."""
    shape = np.asarray(spec.shape, dtype=np.float64)
    origin = np.asarray(spec.mni_centre_mm, dtype=np.float64) - (shape - 1) * spec.spacing / 2.0
    affine = np.diag([spec.spacing, spec.spacing, spec.spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def mni_grid_affine(spec: GridSpec, subject_to_mni: Affine) -> tuple[Affine, dict[str, Any]]:
    """Model grid voxel -> subject RAS mm: ``inv(subject_to_mni) @ mni_grid(spec)``."""
    matrix = np.asarray(subject_to_mni, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise VolumeError(f"subject_to_mni must be a finite 4x4 matrix, got shape {matrix.shape}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-6:
        raise VolumeError("subject_to_mni is singular")
    affine = np.asarray(np.linalg.inv(matrix) @ mni_grid(spec), dtype=np.float64)
    centre = affine @ np.append((np.asarray(spec.shape) - 1) / 2.0, 1.0)
    info = {
        "placement": "mni",
        "grid_centre_subject_mm": centre[:3].round(2).tolist(),
        "mni_scale": round(float(abs(np.linalg.det(matrix[:3, :3])) ** (1 / 3)), 4),
    }
    return affine, info


def brain_on_grid(
    brain_mask: tuple[NDArray[Any], Affine], grid: Affine, spec: GridSpec
) -> NDArray[np.bool_]:
    """The brain mask resampled to the model grid (trilinear, >= 0.5), dilated by
    ``spec.mask_dilation_mm`` (a ball)."""
    mask, mask_affine = brain_mask
    if np.asarray(mask).ndim != 3:
        raise VolumeError(f"brain mask must be 3D, got shape {np.asarray(mask).shape}")
    on_grid = resample_to((np.asarray(mask) > 0).astype(np.float32), mask_affine, grid, spec.shape)
    out = on_grid >= 0.5
    radius = spec.mask_dilation_mm / spec.spacing
    if radius >= 1.0:
        r = int(np.floor(radius))
        zz, yy, xx = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
        ball = xx**2 + yy**2 + zz**2 <= radius**2
        out = ndimage.binary_dilation(out, structure=ball)
    result: NDArray[np.bool_] = out.astype(bool)
    return result


def resample_to(
    volume: NDArray[Any],
    source_affine: Affine,
    target_affine: Affine,
    target_shape: Sequence[int],
    order: int = 1,
) -> FloatArray:
    """Resample ``volume`` onto a target voxel grid by physical coordinates (0 outside): the
    pipeline's :func:`~tumorlens.pipeline.registration.resample`, one resampler for both."""
    shape = tuple(int(n) for n in target_shape)
    return resample(volume, source_affine, target_affine, shape, order=order)


def normalise(
    channels: FloatArray, present: Sequence[bool], clip: float
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Per-channel z-score within the union foreground; zeros outside and for missing ones."""
    masks = [foreground_mask(channels[c]) for c in range(len(present)) if present[c]]
    fg = np.logical_or.reduce(masks) if masks else np.zeros(channels.shape[1:], bool)
    out = np.zeros_like(channels)
    for c, given in enumerate(present):
        if not given or not fg.any():
            continue
        values = channels[c][fg]
        mean, std = float(values.mean()), float(values.std())
        z = (channels[c] - mean) / (std if std > 1e-6 else 1.0)
        out[c] = np.where(fg, np.clip(z, -clip, clip), 0.0)
    return out.astype(np.float32), fg


def normalise_in_mask(
    channels: FloatArray,
    present: Sequence[bool],
    brain: NDArray[np.bool_],
    fov: Sequence[NDArray[np.bool_] | None],
    clip: float,
) -> FloatArray:
    """Per-channel z-score over the brain voxels inside that channel's field of view; zeros
    outside the brain and for missing channels."""
    out = np.zeros_like(channels)
    for c, given in enumerate(present):
        if not given:
            continue
        window = fov[c]
        inside = brain if window is None else brain & window
        if int(inside.sum()) < 100:
            continue
        values = channels[c][inside]
        mean, std = float(values.mean()), float(values.std())
        z = (channels[c] - mean) / (std if std > 1e-6 else 1.0)
        out[c] = np.where(brain, np.clip(z, -clip, clip), 0.0)
    return out.astype(np.float32)


def preprocess_arrays(
    images: Mapping[str, tuple[NDArray[Any], Affine]],
    spec: GridSpec,
    *,
    subject_to_mni: Affine | None = None,
    brain_mask: tuple[NDArray[Any], Affine] | None = None,
) -> Prepared:
    """``{sequence: (array, affine)}`` (any subset of :data:`SEQUENCES`) -> model input.

    ``subject_to_mni`` (subject RAS mm -> MNI mm) and ``brain_mask`` (mask, its affine) come
    from the pipeline's brain extraction: an ``"mni"``-placed grid needs ``subject_to_mni``
    and skull-strips with ``brain_mask``; ``"head"``-placed grids ignore both.
    """
    present = tuple(s for s in SEQUENCES if s in images)
    if not present:
        raise VolumeError(f"no usable sequence; expected some of {', '.join(SEQUENCES)}")
    ref_name = next(s for s in REFERENCE_ORDER if s in images)
    if spec.placement == "mni":
        if subject_to_mni is None:
            raise VolumeError(
                "this model's grid is placed in MNI space: it needs the subject->MNI affine "
                "from brain extraction (subject_to_mni), which was not given"
            )
        affine, info = mni_grid_affine(spec, subject_to_mni)
    else:
        ref, ref_affine = images[ref_name]
        affine, info = grid_affine(spec, np.asarray(ref, dtype=np.float32), ref_affine)
    stack = np.zeros((len(SEQUENCES), *spec.shape), dtype=np.float32)
    fov: list[NDArray[np.bool_] | None] = [None] * len(SEQUENCES)
    masked = spec.placement == "mni" and brain_mask is not None
    for c, name in enumerate(SEQUENCES):
        if name in images:
            data, src_affine = images[name]
            stack[c] = resample_to(data, src_affine, affine, spec.shape)
            if masked:
                ones = np.ones(np.asarray(data).shape, dtype=np.float32)
                fov[c] = resample_to(ones, src_affine, affine, spec.shape) >= 0.5
    given = [s in images for s in SEQUENCES]
    if masked:
        assert brain_mask is not None
        fg = brain_on_grid(brain_mask, affine, spec)
        if int(fg.sum()) < 1000:
            raise VolumeError(
                f"the brain mask covers only {int(fg.sum())} voxels of the model grid; "
                "the brain extraction or subject_to_mni is wrong"
            )
        image = normalise_in_mask(stack, given, fg, fov, spec.clip)
        info["normalisation"] = "brain mask"
        info["brain_voxels"] = int(fg.sum())
    else:
        image, fg = normalise(stack, given, spec.clip)
        info["normalisation"] = "foreground"
    info["reference"] = ref_name
    return Prepared(image=image, affine=affine, present=present, foreground=fg, info=info)


def preprocess_files(
    paths: Mapping[str, Path],
    spec: GridSpec,
    *,
    subject_to_mni: Affine | None = None,
    brain_mask: tuple[NDArray[Any], Affine] | None = None,
) -> Prepared:
    """Like :func:`preprocess_arrays` from NIfTI files (``{sequence: path}``)."""
    return preprocess_arrays(
        {name: load_nifti(path) for name, path in paths.items()},
        spec,
        subject_to_mni=subject_to_mni,
        brain_mask=brain_mask,
    )


def labels_to_grid(
    seg: NDArray[Any], seg_affine: Affine, grid: Affine, shape: Sequence[int], classes: int = 4
) -> NDArray[np.uint8]:
    """Label map -> model grid: each class's indicator resampled trilinearly, then argmax."""
    probs = np.stack(
        [
            resample_to((seg == k).astype(np.float32), seg_affine, grid, shape)
            for k in range(classes)
        ]
    )
    probs[0] += 1e-3  # outside the source field of view: background
    out: NDArray[np.uint8] = probs.argmax(axis=0).astype(np.uint8)
    return out


def probabilities_to_native(
    probs: FloatArray, grid: Affine, native_affine: Affine, native_shape: Sequence[int]
) -> NDArray[np.uint8]:
    """Model-grid class probabilities ``(K, X, Y, Z)`` -> label map on a native image grid
    (trilinear on probabilities, then argmax; outside the model grid: background)."""
    out = np.stack(
        [resample_to(probs[k], grid, native_affine, native_shape) for k in range(len(probs))]
    )
    out[0] += 1e-6
    labels: NDArray[np.uint8] = out.argmax(axis=0).astype(np.uint8)
    return labels


def softmax(logits: NDArray[Any], axis: int = 0) -> FloatArray:
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    out: FloatArray = (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    return out


# --- model cards for the 3D models ---------------------------------------------------------------


@dataclass(frozen=True)
class VolumeCard:
    """The parts of a 3D model card the runtime relies on; ``raw`` is the whole document."""

    name: str
    version: str
    file: str
    sha256: str
    grid: GridSpec
    input_name: str
    output_names: tuple[str, ...]
    seg_labels: tuple[str, ...]
    type_labels: tuple[str, ...]
    raw: dict[str, Any]


def load_volume_card(
    ref: str | Path, models_dir: Path, verify: bool = True
) -> tuple[Path, VolumeCard]:
    """Model by name (``models_dir/<name>.json``) or path to its card/ONNX; sha256 checked."""
    path = Path(ref)
    card_path = (
        path.with_suffix(".json")
        if path.suffix in (".json", ".onnx") or path.exists()
        else models_dir / f"{ref}.json"
    )
    try:
        data = json.loads(card_path.read_text())
        card = VolumeCard(
            name=str(data["name"]),
            version=str(data["version"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]).lower(),
            grid=GridSpec.from_dict(data["inputs"][0]["grid"]),
            input_name=str(data["inputs"][0]["name"]),
            output_names=tuple(str(o["name"]) for o in data["outputs"]),
            seg_labels=tuple(str(lb["name"]) for lb in data.get("segmentation_labels", [])),
            type_labels=tuple(str(lb["name"]) for lb in data.get("labels", [])),
            raw=data,
        )
    except FileNotFoundError as exc:
        raise VolumeError(f"model card {card_path} not found") from exc
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise VolumeError(f"{card_path}: malformed 3D model card: {exc!r}") from exc
    model_path = card_path.parent / card.file
    if not model_path.is_file():
        raise VolumeError(f"model file {model_path} (named by {card_path}) not found")
    if verify:
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        if digest != card.sha256:
            raise VolumeError(f"{model_path}: sha256 {digest} does not match its card")
    return model_path, card
