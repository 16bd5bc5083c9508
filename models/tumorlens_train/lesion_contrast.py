"""How conspicuous the tumour labels of a 3D training set are on the model grid: for each
tumour type and label, the 10th / 50th / 90th percentile over cases of the label's mean
z-score per sequence (the grid's normalisation: z within the brain mask).

    python -m tumorlens_train.lesion_contrast out/train/seg3d_v5/cache/train3d_c
    python -m tumorlens_train.lesion_contrast --case ../shared/data/cases/TCGA-FG-6692 \\
        [--model models/tumorlens_zoo/tumour3d.json]

The first reads a ``seg3d`` run's cache of one dataset (``<work-dir>/cache/<dataset>``). The
second runs the model on one case's NIfTI files (``t1``/``t1c``/``t2``/``flair`` or BraTS
names) with the service's alignment (motion correction), brain extraction and preprocessing,
and reports the mean z per sequence inside the tumour it labels (argmax, before the card's
post-processing): the real lesion to compare the training lesions with; and, with T1 and T1c,
how much of that tumour is brighter on T1c than on T1 beyond normal brain (``t1ce_minus_t1``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from tumorlens.evaluation.volumes import case_brain, motion_corrected, template_dir
from tumorlens.inference.preprocess3d import SEQUENCES, load_nifti
from tumorlens.inference.volume_model import (
    ENHANCING,
    VolumeModel,
)
from tumorlens_train.nets3d import TYPE_CLASSES

LABELS = {1: "core", 2: "oedema", 3: "enhancing"}
#: File stems of one case's sequences: the service's names, then BraTS 2020 and 2023 names.
STEMS = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1c", "t1ce"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
}


def cache_table(cache: Path, min_voxels: int = 20) -> dict[str, dict[str, Any]]:
    """``{"<type> <label>": {"cases": n, "<sequence>": [p10, p50, p90]}}`` over cached cases."""
    rows: dict[str, list[list[float]]] = {}
    for path in sorted(cache.glob("grid-*/*.npz")):
        with np.load(path) as data:
            kind = TYPE_CLASSES[int(data["type_index"])]
            image, labels = data["image"].astype(np.float32), data["labels"]
        for value, name in LABELS.items():
            inside = labels == value
            if inside.sum() >= min_voxels:
                rows.setdefault(f"{kind} {name}", []).append(
                    [float(image[c][inside].mean()) for c in range(len(SEQUENCES))]
                )
    table: dict[str, dict[str, Any]] = {}
    for key, values in sorted(rows.items()):
        array = np.asarray(values)
        entry: dict[str, Any] = {"cases": len(values)}
        for c, sequence in enumerate(SEQUENCES):
            entry[sequence] = np.percentile(array[:, c], [10, 50, 90]).round(2).tolist()
        table[key] = entry
    return table


def case_table(folder: Path, model: Path) -> dict[str, Any]:
    """The model's tumour labels on one case, on its grid, and the mean z per sequence inside
    them (with the 10th and 90th percentile)."""
    arrays = {}
    for sequence, stems in STEMS.items():
        found = [p for stem in stems for p in (folder / f"{stem}.nii.gz", folder / f"{stem}.nii")]
        path = next((p for p in found if p.is_file()), None)
        if path is not None:
            arrays[sequence] = load_nifti(path)
    if not arrays:
        raise SystemExit(f"no t1/t1c/t2/flair NIfTI file in {folder}")
    aligned, methods = motion_corrected(arrays)
    net = VolumeModel(model, model.parent, threads=2)
    brain = case_brain(aligned, template_dir(net.path, model.parent))
    # The runtime's labels on the model grid: the card's offsets and post-processing included.
    probs, prepared, _ = net.grid_probabilities(
        aligned, subject_to_mni=brain.subject_to_mni, brain_mask=(brain.mask, brain.affine)
    )
    labels = np.argmax(probs, axis=0)
    tumour = labels > 0
    out: dict[str, Any] = {
        "model": f"{net.card.raw.get('name')} {net.card.raw.get('version')}",
        "alignment": methods,
        "grid_voxels": {name: int((labels == value).sum()) for value, name in LABELS.items()},
    }
    if tumour.any():
        for c, sequence in enumerate(SEQUENCES):
            if sequence in aligned:
                values = prepared.image[c][tumour]
                out[sequence] = {
                    "mean": round(float(values.mean()), 2),
                    "p10_p90": np.percentile(values, [10, 90]).round(2).tolist(),
                }
        if {"t1", "t1ce"} <= aligned.keys():
            out["t1ce_minus_t1"] = enhancement(
                prepared.image, labels, prepared.foreground, net.card.grid.spacing
            )
    return out


def enhancement(
    image: np.ndarray, labels: np.ndarray, brain: np.ndarray, spacing: float
) -> dict[str, Any]:
    """A model-free look at contrast uptake: T1c z minus T1 z per grid voxel, and how much of
    the labelled tumour exceeds the 99th / 99.5th percentile of that difference in brain at
    least 9 mm from it and 6 mm inside the brain's edge (dura, sinuses and scalp enhance too).

    Why: whether the real lesion enhances decides whether "enhancing" labels on it are false
    positives; a subtraction against the pre-contrast T1 says so without the model.
    """
    t1, t1ce = SEQUENCES.index("t1"), SEQUENCES.index("t1ce")
    diff = image[t1ce].astype(np.float64) - image[t1].astype(np.float64)
    tumour, enhancing = labels > 0, labels == ENHANCING
    margin = max(1, round(9.0 / spacing))
    normal = ndimage.binary_erosion(brain, iterations=max(1, round(6.0 / spacing)))
    normal &= ~ndimage.binary_dilation(tumour, iterations=margin)
    ml = spacing**3 / 1000.0
    out: dict[str, Any] = {
        "normal_voxels": int(normal.sum()),
        "lesion_median": round(float(np.median(diff[tumour])), 2),
        "normal_median": round(float(np.median(diff[normal])), 2),
    }
    for q in (99.0, 99.5):
        threshold = float(np.percentile(diff[normal], q))
        above = diff > threshold
        out[f"p{q:g}"] = {
            "threshold": round(threshold, 2),
            "tumour_ml_above": round(float((above & tumour).sum() * ml), 3),
            "enhancing_label_ml_above": round(float((above & enhancing).sum() * ml), 3),
        }
    out["enhancing_label_ml"] = round(float(enhancing.sum() * ml), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("cache", type=Path, nargs="?", help="a seg3d run's cache of one dataset")
    what.add_argument("--case", type=Path, help="a folder of one case's NIfTI files")
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/tumorlens_zoo/tumour3d.json"),
        help="the 3D model's card, for --case (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.case is not None:
        print(json.dumps(case_table(args.case, args.model), indent=1))
        return 0
    if not any(args.cache.glob("grid-*/*.npz")):
        parser.error(f"no cached case (grid-*/*.npz) under {args.cache}")
    print(json.dumps(cache_table(args.cache), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
