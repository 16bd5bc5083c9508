"""Choose the card's post-processing thresholds on cases the model was not trained on.

    python -m tumorlens_train.component_sweep --work-dir out/train/seg3d_v4 \\
        [--checkpoint best.pt] [--thresholds 0,0.05,0.1,0.2,0.3,0.5] \\
        [--enhancing-thresholds 0,0.1,0.5] [--data out/phantoms/tune3d_s] \\
        [--bg-offsets 0,0.5,1] [--core-offsets 0] [--enhancing-offsets 0]

Runs the checkpoint (torch) on the run's validation cases (``training.data.validation_cases``,
from the run's cache, on the model grid), or with ``--data`` on every case of a separate
tuning set (cached under WORK_DIR/tuning_cache), applies the runtime's
:func:`~tumorlens.inference.volume_model.seg_probabilities` (the card's per-class logit offsets:
background, core, oedema 0, enhancing) and
:func:`~tumorlens.inference.volume_model.postprocess` (small components dropped, then small
enhancement merged into core) at each combination of offsets and thresholds
and prints mean Dice WT/TC/ET (a region absent from both truth and prediction scores 1, so a
healthy case scores 1 with no tumour voxel, else 0). The held-out set plays no part: it
measures the thresholds chosen here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tumorlens.inference.preprocess3d import GridSpec
from tumorlens.inference.volume_model import ml_to_voxels, postprocess, seg_probabilities
from tumorlens_train.nets3d import TYPE_CLASSES, load_checkpoint
from tumorlens_train.train_volumes import grid_dice
from tumorlens_train.volumes import build_cache, load_cached


def validation_paths(work_dir: Path, case_ids: list[str]) -> list[Path]:
    found = {p.stem: p for p in (work_dir / "cache").glob("*/grid-*/*.npz")}
    missing = [c for c in case_ids if c not in found]
    if missing:
        raise SystemExit(f"validation cases not in {work_dir / 'cache'}: {missing[:5]}")
    return [found[c] for c in case_ids]


def sweep(
    work_dir: Path,
    checkpoint: str,
    thresholds: Sequence[float],
    enhancing_thresholds: Sequence[float] = (0.0,),
    *,
    offsets: Sequence[Sequence[float]] = ((0.0, 0.0, 0.0, 0.0),),
    data: Path | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    model, ckpt = load_checkpoint(str(work_dir / checkpoint))
    grid = GridSpec.from_dict(ckpt["train"]["grid"])
    if data is None:
        paths = validation_paths(work_dir, ckpt["train"]["data"]["validation_cases"])
    else:
        # Not under WORK_DIR/cache: the training folders' cases share these case ids.
        paths = build_cache(data, work_dir / "tuning_cache" / data.name, grid, workers)
    cases = load_cached(paths)
    logits = []
    with torch.no_grad():
        for case in tqdm(cases, desc="predict"):
            out = model(torch.from_numpy(case.image.astype(np.float32))[None])[0][0]
            logits.append(out.numpy())
    rows = []
    for offset in tqdm(offsets, desc="sweep", unit="offsets"):
        vector = np.asarray(offset, dtype=np.float32)
        # Once per offset vector, then once per component threshold.
        probs = [seg_probabilities(lg, vector if vector.any() else None) for lg in logits]
        for ml in thresholds:
            voxels = ml_to_voxels(ml, grid.spacing)
            kept = [postprocess(p, voxels, 0) for p in probs]
            for et_ml in enhancing_thresholds:
                et_voxels = ml_to_voxels(et_ml, grid.spacing)
                row = _score(kept, cases, et_voxels)
                rows.append(
                    {
                        "seg_logit_offsets": [float(v) for v in offset],
                        "min_tumour_component_ml": ml,
                        "min_enhancing_ml": et_ml,
                        "voxels": voxels,
                        "enhancing_voxels": et_voxels,
                    }
                    | row
                )
    best = max(
        rows,
        key=lambda r: (
            r["score"],
            -sum(abs(v) for v in r["seg_logit_offsets"]),
            -r["min_enhancing_ml"],
            -r["min_tumour_component_ml"],
        ),
    )
    return {
        "checkpoint": str(work_dir / checkpoint),
        "cases": str(data) if data is not None else "validation cases of the run",
        "n_cases": len(cases),
        "rows": rows,
        "chosen": best["min_tumour_component_ml"],
        "chosen_enhancing": best["min_enhancing_ml"],
        "chosen_offsets": best["seg_logit_offsets"],
    }


def _score(kept: list[Any], cases: list[Any], enhancing_voxels: int) -> dict[str, Any]:
    """Mean grid Dice WT/TC/ET of ``kept`` (probabilities) after the enhancing step, their
    mean (``score``) and how many healthy cases have no tumour voxel."""
    dices = [
        grid_dice(postprocess(p, 0, enhancing_voxels).argmax(axis=0), c.labels)
        for p, c in zip(kept, cases, strict=True)
    ]
    healthy = [
        d["WT"]
        for d, c in zip(dices, cases, strict=True)
        if TYPE_CLASSES[c.type_index] == "healthy"
    ]
    row: dict[str, Any] = {
        k: round(float(np.mean([d[k] for d in dices])), 4) for k in ("WT", "TC", "ET")
    }
    row["score"] = round((row["WT"] + row["TC"] + row["ET"]) / 3, 4)
    row["healthy_clean"] = f"{int(sum(healthy))}/{len(healthy)}"
    return row


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--thresholds", default="0,0.05,0.1,0.2,0.3,0.5")
    parser.add_argument("--enhancing-thresholds", default="0")
    for cls in ("bg", "core", "enhancing"):
        parser.add_argument(
            f"--{cls}-offsets",
            default="0",
            help=f"values added to the {cls} logit to try (comma-separated; default 0)",
        )
    parser.add_argument("--data", type=Path, help="tuning set (BraTS layout) instead")
    parser.add_argument("--workers", type=int, default=1, help="processes preparing --data")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    result = sweep(
        args.work_dir,
        args.checkpoint,
        [float(v) for v in args.thresholds.split(",")],
        [float(v) for v in args.enhancing_thresholds.split(",")],
        offsets=[
            (bg, core, 0.0, enh)
            for bg in _floats(args.bg_offsets)
            for core in _floats(args.core_offsets)
            for enh in _floats(args.enhancing_offsets)
        ],
        data=args.data,
        workers=args.workers,
    )
    for row in result["rows"]:
        print(json.dumps(row))
    print(
        "chosen (best mean Dice; on ties the smallest offsets, then thresholds, enhancing "
        f"first): seg_logit_offsets {result['chosen_offsets']}, "
        f"min_tumour_component_ml {result['chosen']}, "
        f"min_enhancing_ml {result['chosen_enhancing']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
