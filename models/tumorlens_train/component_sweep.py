"""Choose the card's ``min_tumour_component_ml`` on the validation cases of a 3D training run.

    python -m tumorlens_train.component_sweep --work-dir out/train/seg3d_v4 \\
        [--checkpoint best.pt] [--thresholds 0,0.05,0.1,0.2,0.3,0.5]

Runs the checkpoint (torch) on the run's validation cases (``training.data.validation_cases``,
from the run's cache, on the model grid), applies the runtime's
:func:`~tumorlens.inference.volume_model.drop_small_tumour_components` at each threshold and
prints mean Dice WT/TC/ET (a healthy case scores 1 with no tumour voxel, else 0). The held-out
set plays no part: it measures the threshold chosen here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorlens.inference.preprocess3d import GridSpec, softmax
from tumorlens.inference.volume_model import drop_small_tumour_components, ml_to_voxels
from tumorlens_train.nets3d import TYPE_CLASSES, load_checkpoint
from tumorlens_train.train_volumes import grid_dice
from tumorlens_train.volumes import load_cached


def validation_paths(work_dir: Path, case_ids: list[str]) -> list[Path]:
    found = {p.stem: p for p in (work_dir / "cache").glob("*/grid-*/*.npz")}
    missing = [c for c in case_ids if c not in found]
    if missing:
        raise SystemExit(f"validation cases not in {work_dir / 'cache'}: {missing[:5]}")
    return [found[c] for c in case_ids]


def sweep(work_dir: Path, checkpoint: str, thresholds: list[float]) -> dict[str, Any]:
    model, ckpt = load_checkpoint(str(work_dir / checkpoint))
    spacing = GridSpec.from_dict(ckpt["train"]["grid"]).spacing
    cases = load_cached(validation_paths(work_dir, ckpt["train"]["data"]["validation_cases"]))
    probs = []
    with torch.no_grad():
        for case in cases:
            logits = model(torch.from_numpy(case.image.astype(np.float32))[None])[0][0]
            probs.append(softmax(logits.numpy(), axis=0))
    rows = []
    for ml in thresholds:
        voxels = ml_to_voxels(ml, spacing)
        dices = [
            grid_dice(drop_small_tumour_components(p, voxels).argmax(axis=0), c.labels)
            for p, c in zip(probs, cases, strict=True)
        ]
        healthy = [
            d["WT"]
            for d, c in zip(dices, cases, strict=True)
            if TYPE_CLASSES[c.type_index] == "healthy"
        ]
        row = {"min_tumour_component_ml": ml, "voxels": voxels}
        row |= {k: round(float(np.mean([d[k] for d in dices])), 4) for k in ("WT", "TC", "ET")}
        row["score"] = round((row["WT"] + row["TC"] + row["ET"]) / 3, 4)
        row["healthy_clean"] = f"{int(sum(healthy))}/{len(healthy)}"
        rows.append(row)
    best = max(rows, key=lambda r: (r["score"], -r["min_tumour_component_ml"]))
    return {
        "checkpoint": str(work_dir / checkpoint),
        "n_cases": len(cases),
        "rows": rows,
        "chosen": best["min_tumour_component_ml"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--thresholds", default="0,0.05,0.1,0.2,0.3,0.5")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    result = sweep(args.work_dir, args.checkpoint, [float(v) for v in args.thresholds.split(",")])
    for row in result["rows"]:
        print(json.dumps(row))
    print(f"chosen (best mean Dice, smallest on ties): {result['chosen']} mL")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
