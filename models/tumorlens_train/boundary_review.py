"""Where a 3D model's errors lie and what its outlines look like; the figures behind the
boundary-refinement releases (``models/prereg/rule_07*.txt``).

    python -m tumorlens_train.boundary_review shells --model CARD --data DIR [--limit 20]
    python -m tumorlens_train.boundary_review fragments DIR/labels.nii.gz [...]
    python -m tumorlens_train.boundary_review overlay --case ../shared/data/cases/TCGA-FG-6692 \\
        --out crops.png A/labels.nii.gz [B/labels.nii.gz ...]

``shells``: the model on each tumour case of DIR as the runtime runs it, false-positive tumour
(mL) by distance outside the truth and false negatives by depth inside it, in bands of
2/4/6/10/20 mm and beyond, summed over cases. ``fragments``: 2D components (8-connected) of
whole tumour and tumour core per slice, summed over slices, of ``tumorlens infer`` label maps
(a ragged, speckled outline has many). ``overlay``: FLAIR crops around the lesion with each
label map drawn over it, one column per map, plus T2 and T1c, slice by slice (the case's
sequences motion-corrected as the service does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from tumorlens.evaluation.volumes import evaluate_volumes, find_cases, load_labels
from tumorlens.inference.preprocess3d import load_nifti, resample_to

BANDS_MM = (2.1, 4.1, 6.1, 10.1, 20.1, np.inf)
#: Label-map values per region, BraTS (4) and internal (3) enhancing both counted.
REGIONS = {"WT": (1, 2, 3, 4), "TC": (1, 3, 4)}


def shells(model: Path, data: Path, limit: int = 0) -> dict[str, Any]:
    """The runtime's labels (``evaluate_volumes``) on DIR's first ``limit`` tumour cases
    (0: all), errors binned by distance to the truth."""
    report, preds = evaluate_volumes(data, model, model.parent, threads=2)
    truths = {case.case_id: case for case in find_cases(data)}
    bins = np.array((0.0, *BANDS_MM))
    false_pos, false_neg = np.zeros(len(BANDS_MM)), np.zeros(len(BANDS_MM))
    scored = [
        (result, pred)
        for result, pred in zip(report.cases, preds, strict=True)
        if result.tumour_type != "healthy"
    ][: limit or None]
    for result, pred in scored:
        truth, affine = load_labels(truths[result.case_id])
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        ml = float(np.prod(spacing)) / 1000.0
        t, p = truth > 0, pred.labels > 0
        outside = ndimage.distance_transform_edt(~t, sampling=spacing)
        inside = ndimage.distance_transform_edt(t, sampling=spacing)
        false_pos += np.histogram(outside[p & ~t], bins)[0] * ml
        false_neg += np.histogram(inside[t & ~p], bins)[0] * ml
    return {
        "model": str(model),
        "cases": len(scored),
        "bands_mm": [f"<= {b:g}" if np.isfinite(b) else "beyond" for b in BANDS_MM],
        "false_positive_ml_by_distance_outside": false_pos.round(1).tolist(),
        "false_negative_ml_by_depth_inside": false_neg.round(1).tolist(),
    }


def fragments(labels: np.ndarray) -> dict[str, int]:
    """2D components (8-connected) per slice of the last axis, summed, per region."""
    out = {}
    for region, values in REGIONS.items():
        mask = np.isin(labels, values)
        out[region] = sum(
            int(ndimage.label(mask[:, :, z], structure=np.ones((3, 3)))[1])
            for z in range(mask.shape[2])
        )
    return out


def overlay(case: Path, label_files: list[Path], out: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tumorlens.evaluation.volumes import _overlay_rgba, motion_corrected

    files = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}
    arrays = {seq: load_nifti(case / f"{stem}.nii.gz") for seq, stem in files.items()}
    aligned, _ = motion_corrected(arrays)
    images = [nib.load(str(path)) for path in label_files]
    affine, shape = images[0].affine, images[0].shape
    to_ras = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("RAS")
    )

    def ras(array: np.ndarray) -> np.ndarray:
        return np.asarray(nib.orientations.apply_orientation(array, to_ras))

    backgrounds = {s: ras(resample_to(*aligned[s], affine, shape)) for s in ("flair", "t2", "t1ce")}
    maps = [ras(np.asarray(image.dataobj).astype(np.uint8)) for image in images]
    union = np.any([m > 0 for m in maps], axis=0)
    if not union.any():
        raise SystemExit("no tumour label in any of the label maps")
    xs, ys, zs = np.nonzero(union)
    crop = (
        slice(max(0, xs.min() - 15), xs.max() + 15),
        slice(max(0, ys.min() - 15), ys.max() + 15),
    )
    panels = [("FLAIR", "flair", None)]
    panels += [(path.parent.name, "flair", m) for path, m in zip(label_files, maps, strict=True)]
    panels += [("T2", "t2", None), ("T1c", "t1ce", None)]
    slices = list(range(int(zs.min()), int(zs.max()) + 1))
    fig = Figure(figsize=(2.4 * len(panels), 2.4 * len(slices)), layout="constrained")
    for r, z in enumerate(slices):
        for c, (title, sequence, labels) in enumerate(panels):
            ax = fig.add_subplot(len(slices), len(panels), r * len(panels) + c + 1)
            bg = backgrounds[sequence]
            lo, hi = np.percentile(bg[bg > 0], (1, 99.5))
            ax.imshow(np.rot90(bg[(*crop, z)]), cmap="gray", vmin=lo, vmax=hi)
            if labels is not None:
                ax.imshow(np.rot90(_overlay_rgba(np.where(labels == 4, 3, labels)[(*crop, z)])))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title} z={z}", fontsize=7)
    FigureCanvasAgg(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("shells", help="errors by distance to the truth")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--limit", type=int, default=0, help="first N tumour cases (0: all)")
    p = sub.add_parser("fragments", help="per-slice components of label maps")
    p.add_argument("labels", type=Path, nargs="+")
    p = sub.add_parser("overlay", help="FLAIR crops with label maps over them")
    p.add_argument("--case", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("labels", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "shells":
        for key, value in shells(args.model, args.data, args.limit).items():
            print(f"{key}: {value}")
    elif args.command == "fragments":
        for path in args.labels:
            print(path, fragments(np.asarray(nib.load(str(path)).dataobj)))
    else:
        print(overlay(args.case, args.labels, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
