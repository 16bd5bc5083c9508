"""The 2D slice data set: discovery, near-duplicate-aware stratified split, cached preprocessing
and training augmentation.

Preprocessing comes from :mod:`tumorlens.inference.preprocess` (the runtime), so validation
tensors equal what the service feeds the model. Augmentation is applied to the resized grid
before the per-image normalisation, exactly where the runtime would normalise.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from torch.utils.data import Dataset
from tqdm import tqdm

from tumorlens.inference.preprocess import normalise, open_slice, to_grid

CLASSES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
SPLIT_SEED = 20261123
VAL_FRACTION = 0.15
DATASET_SUBDIR = "brain-mri-4class/Training"


def default_data_dir() -> Path:
    """``$TUMORLENS_DATA`` (default ``../shared/data``) / ``brain-mri-4class/Training``."""
    return Path(os.environ.get("TUMORLENS_DATA", "../shared/data")) / DATASET_SUBDIR


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int

    @property
    def name(self) -> str:
        """``class/file`` as written in split files (no directories above the class)."""
        return f"{self.path.parent.name}/{self.path.name}"


def discover(data_dir: Path, classes: Sequence[str] = CLASSES) -> list[Sample]:
    """Every image under ``data_dir/<class>/``, sorted so the split does not depend on the OS."""
    samples: list[Sample] = []
    for label, cls in enumerate(classes):
        folder = data_dir / cls
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder {folder} is missing")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples.extend(Sample(p, label) for p in files)
    if not samples:
        raise FileNotFoundError(f"no images under {data_dir}")
    return samples


def near_duplicate_key(path: Path) -> str:
    """A coarse perceptual hash (16x16 thumbnail, 16 grey levels).

    The public data set holds re-encoded copies of some slices; keeping such copies on one
    side of the split stops them inflating validation accuracy.
    """
    with Image.open(path) as image:
        thumb = np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BILINEAR))
    return hashlib.md5((thumb // 16).tobytes(), usedforsecurity=False).hexdigest()


def stratified_split(
    samples: Sequence[Sample],
    val_fraction: float = VAL_FRACTION,
    seed: int = SPLIT_SEED,
    keys: Sequence[str] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Per class, shuffle near-duplicate groups with ``seed`` and move whole groups to
    validation until it holds ``round(val_fraction * n_class)`` images."""
    keys = keys if keys is not None else [near_duplicate_key(s.path) for s in samples]
    rng = np.random.default_rng(seed)
    val_names: set[str] = set()
    for label in sorted({s.label for s in samples}):
        groups: dict[str, list[Sample]] = defaultdict(list)
        for sample, key in zip(samples, keys, strict=True):
            if sample.label == label:
                groups[key].append(sample)
        ordered = [groups[k] for k in sorted(groups)]
        target = round(val_fraction * sum(len(g) for g in ordered))
        taken = 0
        for index in rng.permutation(len(ordered)):
            if taken >= target:
                break
            val_names.update(s.name for s in ordered[index])
            taken += len(ordered[index])
    train = [s for s in samples if s.name not in val_names]
    val = [s for s in samples if s.name in val_names]
    return train, val


def write_split(
    path: Path, val: Sequence[Sample], n_train: int, seed: int, fraction: float
) -> None:
    """The split file: validation file names only (``class/file``); training is the rest."""
    payload = {
        "dataset": DATASET_SUBDIR,
        "seed": seed,
        "val_fraction": fraction,
        "grouping": "near-duplicate groups (16x16 thumbnail, 16 grey levels) kept together",
        "n_train": n_train,
        "n_validation": len(val),
        "validation": sorted(s.name for s in val),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def read_split(path: Path) -> set[str]:
    data: dict[str, Any] = json.loads(path.read_text())
    return set(data["validation"])


def apply_split(
    samples: Sequence[Sample], val_names: set[str]
) -> tuple[list[Sample], list[Sample]]:
    train = [s for s in samples if s.name not in val_names]
    val = [s for s in samples if s.name in val_names]
    return train, val


def load_grids(samples: Sequence[Sample], size: int, desc: str = "decode") -> NDArray[np.float32]:
    """Decode and resize every sample once (runtime :func:`to_grid`); ``[N, size, size]``."""
    grids = np.empty((len(samples), size, size), dtype=np.float32)
    for i, sample in enumerate(tqdm(samples, desc=desc, unit="img", leave=False)):
        grids[i] = to_grid(open_slice(sample.path), size)
    return grids


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.08
    shear_deg: float = 5.0
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.02


def augment(
    grid: NDArray[np.float32], rng: np.random.Generator, cfg: AugmentConfig
) -> NDArray[np.float32]:
    """Random flip, affine (rotation/scale/shear/shift, which also crops) and gamma/noise."""
    size = grid.shape[0]
    low, high = float(grid.min()), float(grid.max())
    unit = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    if rng.random() < cfg.hflip:
        unit = unit[:, ::-1]
    angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    shear = math.radians(rng.uniform(-cfg.shear_deg, cfg.shear_deg))
    zoom = rng.uniform(*cfg.scale)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = rot @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]]) / zoom
    centre = np.array([size / 2 - 0.5, size / 2 - 0.5])
    shift = rng.uniform(-cfg.translate, cfg.translate, size=2) * size
    offset = centre - matrix @ (centre + shift)
    unit = ndimage.affine_transform(unit, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    unit = np.clip(unit, 0.0, 1.0) ** rng.uniform(*cfg.gamma)
    if cfg.noise_std > 0:
        unit = unit + rng.normal(0.0, cfg.noise_std * rng.random(), size=unit.shape)
    out: NDArray[np.float32] = unit.astype(np.float32)
    return out


class SliceDataset(Dataset[tuple[torch.Tensor, int]]):
    """Cached grids -> (optionally augmented) normalised ``[1, S, S]`` tensors."""

    def __init__(
        self,
        grids: NDArray[np.float32],
        labels: Sequence[int],
        augment_cfg: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.grids = grids
        self.labels = list(labels)
        self.augment_cfg = augment_cfg
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        grid = self.grids[index]
        if self.augment_cfg is not None:
            grid = augment(grid, self.rng, self.augment_cfg)
        return torch.from_numpy(normalise(grid)[np.newaxis].copy()), self.labels[index]


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, scaled to mean 1."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)
