"""Boundary refinement (tumorlens.inference.refine) on a BraTS-sized study: each shortcut
against the general route it replaces, same arrays, same run, results checked equal.

    python bench/refine.py [--runs 5]

The study is the synthetic head of ``bench/e2e.py`` (4 x 155 slices of 240 x 240, 1 mm), run
through the shipped tumour3d model as the worker runs it. Printed (medians of ``--runs``):

* the model's labels on the native grid without refinement (``labels_on_native``) and with the
  card's refinement: what refinement costs a study;
* each of the three boundaries computed in its domain's box against the same maths on the whole
  refinement box (``_refine_boundary_in_box``), checked equal;
* the study images on the box: ``registration.resample``'s whole-voxel-shift copy against
  ``ndimage.affine_transform`` (trilinear), checked close.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from host import describe, machine  # bench/host.py (bench/ is on sys.path as a script)
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.brain_mask import median_seconds  # noqa: E402
from tests.helpers.volumes import synthetic_head  # noqa: E402
from tumorlens.evaluation.volumes import case_brain  # noqa: E402
from tumorlens.inference import refine  # noqa: E402
from tumorlens.inference.preprocess3d import load_nifti, resample_to  # noqa: E402
from tumorlens.inference.volume_model import (  # noqa: E402
    VolumeModel,
    labels_on_native,
    refinement_box,
)
from tumorlens.pipeline.registration import box_affine, support_box  # noqa: E402

MODELS = REPO / "models" / "tumorlens_zoo"
NAMES = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}


def row(name: str, new: float, old: float, same: str) -> None:
    print(f"{name:<34} {new * 1000:9.0f} ms {old * 1000:9.0f} ms {old / new:7.1f}x  {same}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(describe(machine()))
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_head(Path(tmp))
        images = {NAMES[k]: load_nifti(p) for k, p in paths.items()}
    net = VolumeModel("tumour3d", MODELS, threads=2)
    if net.refinement is None:
        raise SystemExit("the shipped card has no boundary_refinement: nothing to measure")
    settings = net.refinement
    data, native = images["t1ce"]
    shape = data.shape
    brain = case_brain(images, MODELS)
    probs, prepared, _ = net.grid_probabilities(
        images, subject_to_mni=brain.subject_to_mni, brain_mask=(brain.mask, brain.affine)
    )
    grid = prepared.affine
    print(f"tumour3d {net.card.raw.get('version')}, refinement {settings.to_dict()}")
    print(f"{'step':<34} {'this':>12} {'reference':>12} {'ratio':>8}  check")
    plain_s, plain = median_seconds(lambda: labels_on_native(probs, grid, native, shape), args.runs)
    refined_s, refined = median_seconds(
        lambda: labels_on_native(probs, grid, native, shape, refinement=settings, images=images),
        args.runs,
    )
    print(
        f"{'labels, refined vs plain':<34} {refined_s * 1000:9.0f} ms {plain_s * 1000:9.0f} ms"
        f"  refinement costs {refined_s - plain_s:.2f} s; tumour voxels "
        f"{int((plain > 0).sum())} -> {int((refined > 0).sum())}"
    )

    # The refinement box, as labels_on_native builds it.
    box = support_box(np.argmax(probs, axis=0) != 0, np.linalg.inv(native) @ grid, shape)
    assert box is not None
    spacing = np.sqrt((native[:3, :3] ** 2).sum(axis=0))
    box = refinement_box(box, spacing, settings, shape)
    affine = box_affine(native, box)
    box_shape = [b.stop - b.start for b in box]
    crop_s, crop = median_seconds(
        lambda: np.stack([resample_to(a, s, affine, box_shape) for a, s in images.values()]),
        args.runs,
    )

    def interpolated() -> np.ndarray:
        arrays = []
        for a, s in images.values():
            mapping = np.linalg.inv(s) @ affine
            arrays.append(
                ndimage.affine_transform(
                    np.asarray(a, dtype=np.float32),
                    mapping[:3, :3],
                    offset=mapping[:3, 3],
                    output_shape=box_shape,
                    order=1,
                    prefilter=False,
                )
            )
        return np.stack(arrays)

    resample_s, resampled = median_seconds(interpolated, args.runs)
    close = np.allclose(crop, resampled, atol=1e-4 * float(np.abs(crop).max()))
    row("images on the box: shift copy", crop_s, resample_s, "close" if close else "DIFFERENT")

    native_probs = np.stack([resample_to(p, grid, affine, box_shape) for p in probs])
    native_probs[0] += 1e-6
    features = crop.astype(np.float32)
    tumour = np.maximum(native_probs[1:].sum(axis=0), 1e-6)
    whole = native_probs[1:].sum(axis=0) / np.maximum(native_probs.sum(axis=0), 1e-6) > 0.5
    p_core = ((native_probs[1] + native_probs[3]) / tumour).astype(np.float32)
    for name, p_inside, domain in (
        ("whole tumour boundary", (1.0 - native_probs[0]).astype(np.float32), None),
        ("core boundary", p_core, whole),
    ):
        dom = np.ones(box_shape, dtype=bool) if domain is None else domain
        new_s, new = median_seconds(
            lambda p=p_inside, d=dom: refine.refine_boundary(p, features, d, spacing, settings),
            args.runs,
        )
        old_s, old = median_seconds(
            lambda p=p_inside, d=dom: refine._refine_boundary_in_box(
                p, features, d, spacing, settings
            ),
            args.runs,
        )
        row(f"{name}: domain box", new_s, old_s, "equal" if np.array_equal(new, old) else "DIFF")
    return 0


if __name__ == "__main__":
    sys.exit(main())
