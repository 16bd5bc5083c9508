"""How conspicuous the tumour labels of a 3D training set are on the model grid: for each
tumour type and label, the 10th / 50th / 90th percentile over cases of the label's mean
z-score per sequence (the grid's normalisation: z within the brain mask).

    python -m tumorlens_train.lesion_contrast out/train/seg3d_v5/cache/train3d_c

Reads a ``seg3d`` run's cache of one dataset (``<work-dir>/cache/<dataset>``). Compare with a
real lesion to see whether training lesions look like it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tumorlens.inference.preprocess3d import SEQUENCES
from tumorlens_train.nets3d import TYPE_CLASSES

LABELS = {1: "core", 2: "oedema", 3: "enhancing"}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("cache", type=Path, help="a seg3d run's cache folder of one dataset")
    args = parser.parse_args(argv)
    if not any(args.cache.glob("grid-*/*.npz")):
        parser.error(f"no cached case (grid-*/*.npz) under {args.cache}")
    print(json.dumps(cache_table(args.cache), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
