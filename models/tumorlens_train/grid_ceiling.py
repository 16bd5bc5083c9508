"""The best Dice a 3D model on a given grid could reach: each case's truth sent through the
runtime path instead of a prediction (brain extraction, the model grid, skull stripping by the
dilated brain mask, probabilities back to the label grid), then scored like a model.

``python -m tumorlens_train.grid_ceiling DIR [--spacing 3 --shape 64,80,64 --limit N]``
prints per-case and mean Dice; the gap between this and a model's Dice is the model's, not
the grid's or the mask's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tumorlens.evaluation.seg_metrics import REGIONS, dice, region_mask
from tumorlens.evaluation.volumes import case_brain, find_cases, load_labels
from tumorlens.inference.preprocess3d import (
    GridSpec,
    labels_to_grid,
    load_nifti,
    preprocess_arrays,
    probabilities_to_native,
)
from tumorlens_train.volumes import TEMPLATE_DIR


def ceiling(root: Path, spec: GridSpec, limit: int = 0) -> dict[str, dict[str, float]]:
    cases = find_cases(root)[: limit or None]
    scores: dict[str, list[float]] = {r: [] for r in REGIONS}
    tumour: dict[str, list[float]] = {r: [] for r in REGIONS}
    for case in cases:
        truth, affine = load_labels(case)
        arrays = {name: load_nifti(path) for name, path in case.images.items()}
        brain = case_brain(arrays, TEMPLATE_DIR)
        prepared = preprocess_arrays(
            arrays,
            spec,
            subject_to_mni=brain.subject_to_mni,
            brain_mask=(brain.mask, brain.affine),
        )
        on_grid = labels_to_grid(truth, affine, prepared.affine, spec.shape)
        on_grid[~prepared.foreground] = 0  # what skull stripping hides from the model
        probs = np.stack([(on_grid == k).astype(np.float32) for k in range(4)])
        back = probabilities_to_native(probs, prepared.affine, affine, truth.shape)
        result = {r: dice(region_mask(back, r), region_mask(truth, r)) for r in REGIONS}
        for r in REGIONS:
            scores[r].append(result[r])
            if truth.any():
                tumour[r].append(result[r])
        rounded = {k: round(v, 3) for k, v in result.items()}
        print(f"{case.case_id} {case.tumour_type}: {rounded} ({brain.method})", flush=True)
    return {
        "all": {r: float(np.mean(v)) for r, v in scores.items()},
        "tumour_cases": {r: float(np.mean(v)) for r, v in tumour.items() if v},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="BraTS-layout cases with labels")
    parser.add_argument("--spacing", type=float, default=3.0)
    parser.add_argument("--shape", default="64,80,64")
    parser.add_argument("--limit", type=int, default=0, help="first N cases only")
    args = parser.parse_args()
    x, y, z = (int(v) for v in args.shape.split(","))
    spec = GridSpec(spacing=args.spacing, shape=(x, y, z), placement="mni")
    for name, means in ceiling(args.dir, spec, args.limit).items():
        print(name, {k: round(v, 3) for k, v in means.items()})


if __name__ == "__main__":
    main()
