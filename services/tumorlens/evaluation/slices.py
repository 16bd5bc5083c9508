"""Evaluate a 2D slice classifier (ONNX + card) on a folder of class folders.

``DIR/<class>/*.jpg``: each class folder must name a card label (or one of its aliases).
Unreadable images and images with the wrong channel count are skipped and reported; an
empty tree or an unknown class folder is an error, since metrics over it would mislead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tumorlens.errors import EvaluationDataError, SliceImageError
from tumorlens.evaluation.report import Skipped, SliceReport, build_report
from tumorlens.inference.card import ModelCard, resolve_model
from tumorlens.inference.preprocess import preprocess_file
from tumorlens.inference.session import create_session

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int

    @property
    def name(self) -> str:
        """``class/file``, the form used in split files."""
        return f"{self.path.parent.name}/{self.path.name}"


def collect_images(
    root: Path, card: ModelCard, only: set[str] | None = None
) -> list[LabelledImage]:
    """Image files under ``root/<class>/``, sorted; ``only`` keeps just those ``class/file``
    names (a split file's validation list)."""
    if not root.is_dir():
        raise EvaluationDataError(f"{root} is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise EvaluationDataError(
            f"{root} has no class folders; expected subfolders named {', '.join(card.label_names)}"
        )
    unknown = [f.name for f in folders if not any(lb.matches(f.name) for lb in card.labels)]
    if unknown:
        raise EvaluationDataError(
            f"{root}: unknown class folder(s) {', '.join(map(repr, unknown))}; "
            f"model {card.name} knows {', '.join(card.label_names)}"
        )
    images: list[LabelledImage] = []
    for folder in folders:
        label = next(lb.index for lb in card.labels if lb.matches(folder.name))
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(LabelledImage(path, label))
    if only is not None:
        kept = [im for im in images if im.name in only]
        missing = len(only) - len(kept)
        if missing:
            log.warning("%d file(s) named by the split file are not under %s", missing, root)
        images = kept
    if not images:
        raise EvaluationDataError(f"no images to evaluate under {root}")
    return images


def read_split_names(path: Path) -> set[str]:
    """The ``validation`` list of a split file written by ``tumorlens-train``."""
    try:
        data = json.loads(path.read_text())
        return {str(name) for name in data["validation"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EvaluationDataError(f"cannot read split file {path}: {exc}") from exc


def _batches(items: Sequence[LabelledImage], size: int) -> Iterator[Sequence[LabelledImage]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Predictions:
    labels: NDArray[np.int64]
    logits: NDArray[np.float32]
    skipped: list[Skipped]
    inference_seconds: float
    preprocess_seconds: float


def predict(
    images: Sequence[LabelledImage],
    model_path: Path,
    card: ModelCard,
    batch_size: int = 32,
    threads: int = 0,
) -> Predictions:
    """Preprocess and run every image; undecodable ones are skipped and logged by name."""
    session = create_session(model_path, threads=threads)
    size = card.input_size
    # One untimed call so session warm-up (allocations, kernel choice) is not in ms/image.
    warm = np.zeros((1, card.input_channels, size, size), np.float32)
    session.run(["logits"], {card.input_name: warm})
    labels: list[int] = []
    logits: list[NDArray[np.float32]] = []
    skipped: list[Skipped] = []
    t_pre = t_inf = 0.0
    for batch in _batches(images, batch_size):
        started = time.perf_counter()
        arrays, batch_labels = [], []
        for item in batch:
            try:
                arrays.append(preprocess_file(item.path, size))
                batch_labels.append(item.label)
            except SliceImageError as exc:
                log.warning("skipping %s", exc)
                skipped.append(Skipped(str(item.path), exc.reason))
        t_pre += time.perf_counter() - started
        if not arrays:
            continue
        started = time.perf_counter()
        (out,) = session.run(["logits"], {card.input_name: np.stack(arrays)})
        t_inf += time.perf_counter() - started
        logits.append(np.asarray(out, dtype=np.float32))
        labels.extend(batch_labels)
    if not labels:
        raise EvaluationDataError(f"none of the {len(images)} image(s) could be read")
    return Predictions(
        labels=np.asarray(labels, dtype=np.int64),
        logits=np.concatenate(logits),
        skipped=skipped,
        inference_seconds=t_inf,
        preprocess_seconds=t_pre,
    )


def evaluate_slices(
    root: Path,
    model: str | Path,
    models_dir: Path,
    *,
    split_file: Path | None = None,
    batch_size: int = 32,
    threads: int = 0,
) -> tuple[SliceReport, Predictions]:
    """Evaluate ``model`` on ``root``; returns the report and the raw predictions (for plots)."""
    model_path, card = resolve_model(model, models_dir)
    only = read_split_names(split_file) if split_file is not None else None
    images = collect_images(root, card, only)
    log.info("evaluating %s %s on %d image(s) from %s", card.name, card.version, len(images), root)
    preds = predict(images, model_path, card, batch_size=batch_size, threads=threads)
    report = build_report(
        card=card,
        y_true=preds.labels,
        logits=preds.logits,
        skipped=preds.skipped,
        inference_seconds=preds.inference_seconds,
        preprocess_seconds=preds.preprocess_seconds,
    )
    return report, preds
