"""Data for the 3D models: phantoms (generated from seeds on the fly, or read from a BraTS-layout
folder) and real BraTS 2019/2020 (``HGG/``, ``LGG/``), 2021 and 2023 folders.

Every source goes through the runtime's own preprocessing
(:func:`tumorlens.inference.preprocess3d.preprocess_arrays` / ``preprocess_files``: resample to
the model grid by physical coordinates, grid placement, per-channel z-score) and
:func:`labels_to_grid` for the labels, so training and the service see identical inputs. For an
MNI-placed grid (``GridSpec.placement == "mni"``) every case first goes through the service's
own brain extraction (:func:`tumorlens.evaluation.volumes.case_brain` ->
:func:`tumorlens.pipeline.brain_mask.extract_brain`: template registration -> subject_to_mni,
brain mask), so the model learns with the registration error and mask quality it will meet at
run time. Prepared cases are cached as ``.npz`` (float16 images, uint8 labels) because
preprocessing (~1-3 s per case with brain extraction) would otherwise dominate a CPU training
step.

Registration-error augmentation (``AugmentConfig.p_affine``): a random small rotation (up to
``max_rotation_deg`` about each axis), isotropic scale (up to ``max_scale``) and shift (up to
``max_shift_vox``) about the grid centre, applied to the cached grid (trilinear for the image,
nearest for the labels; zeros come in at the edges, like the skull-stripped background).

Sequence dropout (training only): each of the four channels is zeroed with probability
``p_drop`` (at most two at a time, and never all of T1c/FLAIR/T2 together), with **no** extra
channel-present mask input: a missing sequence is simply an all-zero channel, which is also what
the runtime feeds when a study lacks it. Subsets seen in training: all four; any one or two
dropped (so e.g. {T1c, FLAIR}, {T1, T1c, FLAIR}, {T2, FLAIR, T1c}); only the full set (and the
subsets measured in the card) have held-out metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from tqdm import tqdm

from tumorlens.evaluation.volumes import CaseFiles, case_brain, find_cases, load_labels
from tumorlens.inference.preprocess3d import (
    SEQUENCES,
    GridSpec,
    labels_to_grid,
    load_nifti,
    preprocess_arrays,
)
from tumorlens_train.nets3d import TYPE_CLASSES

log = logging.getLogger(__name__)

#: Where the MNI template (for brain extraction) is read from.
TEMPLATE_DIR = Path("models/tumorlens_zoo")

#: Case type -> index in TYPE_CLASSES; -1 when unknown (no type loss for that case).
UNKNOWN = -1


def type_index(name: str | None) -> int:
    return TYPE_CLASSES.index(name) if name in TYPE_CLASSES else UNKNOWN


@dataclass
class Prepared:
    image: NDArray[np.float16]  # (4, X, Y, Z)
    labels: NDArray[np.uint8]  # (X, Y, Z) internal labels
    type_index: int
    case_id: str


def _preprocess(
    arrays: dict[str, tuple[NDArray[Any], NDArray[np.float64]]],
    spec: GridSpec,
    template_dir: Path,
    info: dict[str, Any] | None = None,
) -> Any:
    """The runtime preprocessing, with the runtime brain extraction for MNI-placed grids."""
    if spec.placement != "mni":
        return preprocess_arrays(arrays, spec)
    brain = case_brain(arrays, template_dir)
    if info is not None:
        info.update(
            brain_method=brain.method,
            brain_ml=round(brain.volume_ml, 1),
            brain_agreement=round(brain.agreement, 3),
        )
    return preprocess_arrays(
        arrays, spec, subject_to_mni=brain.subject_to_mni, brain_mask=(brain.mask, brain.affine)
    )


def prepare_case(
    case: CaseFiles,
    spec: GridSpec,
    template_dir: Path = TEMPLATE_DIR,
    info: dict[str, Any] | None = None,
) -> Prepared:
    """One BraTS-layout case (phantom or real) -> model grid."""
    arrays = {name: load_nifti(path) for name, path in case.images.items()}
    prepared = _preprocess(arrays, spec, template_dir, info)
    seg, seg_affine = load_labels(case)
    labels = labels_to_grid(seg, seg_affine, prepared.affine, spec.shape)
    if info is not None and spec.placement == "mni":
        # tumour voxels the model cannot see (outside the dilated brain mask)
        tumour = labels > 0
        info["tumour_outside_mask"] = int((tumour & ~prepared.foreground).sum())
        info["tumour_voxels"] = int(tumour.sum())
    return Prepared(
        prepared.image.astype(np.float16), labels, type_index(case.tumour_type), case.case_id
    )


def prepare_phantom(
    seed: int,
    tumour_type: str | None,
    spec: GridSpec,
    template_dir: Path = TEMPLATE_DIR,
    **config: Any,
) -> Prepared:
    """Generate a phantom in memory (no files) and bring it to the model grid."""
    from tumorlens_train.phantoms import PhantomConfig, generate_case

    phantom = generate_case(seed, tumour_type, PhantomConfig(**config))
    arrays = {s: (phantom.images[s], phantom.affine) for s in SEQUENCES}
    prepared = _preprocess(arrays, spec, template_dir)
    labels = labels_to_grid(phantom.seg, phantom.affine, prepared.affine, spec.shape)
    return Prepared(
        prepared.image.astype(np.float16),
        labels,
        type_index(phantom.metadata["tumour_type"]),
        f"seed_{seed}",
    )


def _cache_one(job: tuple[CaseFiles, GridSpec, Path, Path]) -> str:
    case, spec, path, template_dir = job
    if not path.exists():
        info: dict[str, Any] = {}
        p = prepare_case(case, spec, template_dir, info)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, image=p.image, labels=p.labels, type_index=p.type_index, info=json.dumps(info)
        )
        tmp.replace(path)
    return case.case_id


def build_cache(
    root: Path,
    cache_dir: Path,
    spec: GridSpec,
    workers: int = 1,
    template_dir: Path = TEMPLATE_DIR,
) -> list[Path]:
    """Prepare every case under ``root`` into ``cache_dir/<grid key>/<case>.npz``, kept between
    runs; the grid key (a hash of the grid spec) keeps caches of other grids or placements
    from being reused by mistake."""
    key = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    cache_dir = cache_dir / f"grid-{key}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cases = find_cases(root)
    jobs = [(c, spec, cache_dir / f"{c.case_id}.npz", template_dir) for c in cases]
    todo = [j for j in jobs if not j[2].exists()]
    if todo:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(tqdm(pool.map(_cache_one, todo), total=len(todo), desc="prepare"))
        else:
            for job in tqdm(todo, desc="prepare"):
                _cache_one(job)
    return [j[2] for j in jobs]


def load_cached(paths: list[Path]) -> list[Prepared]:
    out = []
    for path in paths:
        with np.load(path) as data:
            out.append(Prepared(data["image"], data["labels"], int(data["type_index"]), path.stem))
    return out


@dataclass(frozen=True)
class AugmentConfig:
    p_flip: float = 0.5  # left-right
    max_shift_vox: int = 4  # random translation (wraps; the grid margin is background)
    intensity_scale: float = 0.1  # per-channel z * U(1-s, 1+s) + U(-s, s)
    p_drop: float = 0.15  # per-channel sequence dropout
    # registration-error mimic: random rotation / isotropic scale / shift about the grid centre
    # (replaces the wrapping shift when drawn)
    p_affine: float = 0.0
    max_rotation_deg: float = 6.0
    max_scale: float = 0.06


def random_affine(
    shape: tuple[int, ...], rng: np.random.Generator, cfg: AugmentConfig
) -> NDArray[np.float64]:
    """Output voxel -> input voxel (4x4): rotation about each axis, isotropic scale, shift."""
    angles = np.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, 3))
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        matrix = rot @ matrix
    matrix = matrix * rng.uniform(1 - cfg.max_scale, 1 + cfg.max_scale)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2.0
    shift = rng.uniform(-cfg.max_shift_vox, cfg.max_shift_vox, 3)
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = centre - matrix @ centre + shift
    return out


def warp(
    x: NDArray[np.float32], y: NDArray[np.int64], mapping: NDArray[np.float64]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Apply an output->input voxel mapping to a (C, X, Y, Z) image and its (X, Y, Z) labels."""
    kwargs: dict[str, Any] = {"mode": "constant", "cval": 0.0, "prefilter": False}
    xs = np.stack(
        [ndimage.affine_transform(c, mapping[:3, :3], mapping[:3, 3], order=1, **kwargs) for c in x]
    ).astype(np.float32)
    ys = ndimage.affine_transform(
        y.astype(np.uint8), mapping[:3, :3], mapping[:3, 3], order=0, **kwargs
    ).astype(np.int64)
    return xs, ys


def augment(
    image: NDArray[Any], labels: NDArray[np.uint8], rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    x = image.astype(np.float32)
    y = labels.astype(np.int64)
    if rng.random() < cfg.p_flip:
        x, y = x[:, ::-1], y[::-1]
    if cfg.p_affine and rng.random() < cfg.p_affine:
        x, y = warp(
            np.ascontiguousarray(x), np.ascontiguousarray(y), random_affine(y.shape, rng, cfg)
        )
    elif cfg.max_shift_vox:
        shift = tuple(int(v) for v in rng.integers(-cfg.max_shift_vox, cfg.max_shift_vox + 1, 3))
        x = np.roll(x, shift, axis=(1, 2, 3))
        y = np.roll(y, shift, axis=(0, 1, 2))
    s = cfg.intensity_scale
    nonzero = x != 0
    scale = rng.uniform(1 - s, 1 + s, (4, 1, 1, 1)).astype(np.float32)
    offset = rng.uniform(-s, s, (4, 1, 1, 1)).astype(np.float32)
    x = np.where(nonzero, x * scale + offset, 0.0).astype(np.float32)
    drop = rng.random(4) < cfg.p_drop
    if drop.sum() > 2 or drop[1:].all():
        drop[:] = False
    x[drop] = 0.0
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def batches(
    cases: list[Prepared], batch_size: int, rng: np.random.Generator, cfg: AugmentConfig
) -> Any:
    """Endless shuffled, augmented batches ``(x, y_seg, y_type)`` as numpy arrays."""
    while True:
        order = rng.permutation(len(cases))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            items = [
                augment(cases[i].image, cases[i].labels, rng, cfg)
                for i in order[start : start + batch_size]
            ]
            yield (
                np.stack([a for a, _ in items]),
                np.stack([b for _, b in items]),
                np.array([cases[i].type_index for i in order[start : start + batch_size]]),
            )
