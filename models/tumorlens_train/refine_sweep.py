"""Choose the card's boundary-refinement strength on a tuning set (neither trained on nor held out).

    python -m tumorlens_train.refine_sweep --model models/tumorlens_zoo/tumour3d.json \\
        --data out/phantoms/tune3d_u --strengths 0,1,2,4,8 [--json FILE]

Runs the model once per case exactly as the runtime does (brain extraction, the card's offsets
and post-processing on the model grid), then draws the labels on the case's grid with each
strength of :mod:`tumorlens.inference.refine` (0: off, the plain trilinear argmax) and prints
mean Dice WT/TC/ET per strength (a region absent from both truth and prediction scores 1).
Chosen: the best mean of the three; on ties the smallest strength.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tumorlens.evaluation.seg_metrics import REGIONS, dice, region_mask
from tumorlens.evaluation.volumes import case_brain, find_cases, load_labels, template_dir
from tumorlens.inference.preprocess3d import load_nifti
from tumorlens.inference.refine import BoundaryRefinement
from tumorlens.inference.volume_model import VolumeModel, labels_on_native


def sweep(
    model: Path,
    data: Path,
    strengths: Sequence[float],
    threads: int = 2,
    *,
    smoothing_mm: float = 0.0,
    max_shift_mm: float = float("inf"),
) -> dict[str, Any]:
    net = VolumeModel(model, model.parent, threads)
    templates = template_dir(net.path, model.parent)
    cases = find_cases(data)
    if not cases:
        raise SystemExit(f"no BraTS-layout case under {data}")
    dices: dict[float, list[dict[str, float]]] = {s: [] for s in strengths}
    for case in tqdm(cases, desc="refine sweep", unit="case"):
        truth, affine = load_labels(case)
        arrays = {name: load_nifti(path) for name, path in case.images.items()}
        brain = case_brain(arrays, templates)
        probs, prepared, _ = net.grid_probabilities(
            arrays, subject_to_mni=brain.subject_to_mni, brain_mask=(brain.mask, brain.affine)
        )
        for strength in strengths:
            settings = (
                BoundaryRefinement(strength, smoothing_mm=smoothing_mm, max_shift_mm=max_shift_mm)
                if strength > 0
                else None
            )
            labels = labels_on_native(
                probs, prepared.affine, affine, truth.shape, refinement=settings, images=arrays
            )
            dices[strength].append(
                {r: dice(region_mask(labels, r), region_mask(truth, r)) for r in REGIONS}
            )
    rows = []
    for strength in strengths:
        row: dict[str, Any] = {"strength": strength}
        row |= {r: round(float(np.mean([d[r] for d in dices[strength]])), 4) for r in REGIONS}
        row["score"] = round(sum(row[r] for r in REGIONS) / len(REGIONS), 4)
        rows.append(row)
    best = max(rows, key=lambda r: (r["score"], -r["strength"]))
    return {
        "model": str(model),
        "data": str(data),
        "n_cases": len(cases),
        "smoothing_mm": smoothing_mm,
        "max_shift_mm": max_shift_mm if np.isfinite(max_shift_mm) else None,
        "rows": rows,
        "chosen_strength": best["strength"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the 3D model's card (.json)")
    parser.add_argument("--data", type=Path, required=True, help="tuning set, BraTS layout")
    parser.add_argument("--strengths", default="0,1,2,4,8")
    parser.add_argument("--smoothing-mm", type=float, default=0.0, help="fixed, not swept")
    parser.add_argument("--max-shift-mm", type=float, default=float("inf"), help="fixed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = sweep(
        args.model,
        args.data,
        [float(v) for v in args.strengths.split(",")],
        threads=args.threads,
        smoothing_mm=args.smoothing_mm,
        max_shift_mm=args.max_shift_mm,
    )
    for row in result["rows"]:
        print(json.dumps(row))
    print(f"chosen (best mean Dice; smallest on ties): strength {result['chosen_strength']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
