"""Brain mask and alignment on a BraTS-sized grid: each shortcut against the general route it
replaces, measured in the same run on the same arrays, and the two steps as a whole.

    python bench/brain_mask.py [--runs 5]

The study is the synthetic head of ``bench/e2e.py`` (4 x 155 slices of 240 x 240, one Frame of
Reference, one grid). For each shortcut it prints the median of ``--runs`` timings of the
shortcut and of its reference, their ratio, and checks that both give the same array:

* same-grid resample: ``registration.resample`` against ``ndimage.affine_transform``;
* hole filling per slice: ``registration.fill_holes`` against ``ndimage.binary_fill_holes``
  slice by slice;
* template warp: the brain mask's bounding-box warp against a warp of the whole grid;
* provisional mask: inside the head's bounding box against the whole field of view.

Then ``align_sequences`` and ``extract_brain`` end to end (medians, absolute).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from host import describe, machine  # bench/host.py (bench/ is on sys.path as a script)
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.volumes import synthetic_head  # noqa: E402
from tumorlens.pipeline import brain_mask  # noqa: E402
from tumorlens.pipeline.grid import align_sequences  # noqa: E402
from tumorlens.pipeline.registration import fill_holes, head_mask, resample  # noqa: E402
from tumorlens.pipeline.volumes import SeriesVolume, nifti_image  # noqa: E402

MODELS = REPO / "models" / "tumorlens_zoo"


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image: Any = nib.load(str(path))
    return np.asanyarray(image.dataobj), np.asarray(image.affine)


def median_seconds(run: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median wall time of ``runs`` calls, and the last call's result."""
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def compare(name: str, fast: Callable[[], Any], reference: Callable[[], Any], runs: int) -> None:
    fast_s, fast_out = median_seconds(fast, runs)
    ref_s, ref_out = median_seconds(reference, runs)
    same = bool(np.array_equal(fast_out, ref_out))
    print(
        f"{name:<28} {1000 * fast_s:8.1f} ms  reference {1000 * ref_s:8.1f} ms"
        f"  ratio {ref_s / fast_s:5.1f}x  same result: {same}"
    )
    if not same:
        raise SystemExit(f"{name}: the shortcut differs from its reference")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(describe(machine()))
    with tempfile.TemporaryDirectory(prefix="tl-bench-mask-") as tmp:
        paths = synthetic_head(Path(tmp))
        # In memory, as the worker holds them (a file-backed image is re-read at each access).
        volumes = {
            s: SeriesVolume(s, f"1.2.3.{i}", "1.2.3.9", nifti_image(*_read(p)), ())
            for i, (s, p) in enumerate(paths.items())
        }
    study = align_sequences(volumes)
    print(f"study: {len(study.sequences)} x {study.shape}")
    t1 = study.array("t1")
    affine, shape = study.affine, study.shape

    compare(
        "same-grid resample",
        lambda: resample(t1, affine, affine, shape),
        lambda: ndimage.affine_transform(
            t1, np.eye(3), output_shape=shape, order=1, prefilter=False, output=np.float32
        ),
        args.runs,
    )
    head = head_mask(ndimage.gaussian_filter(t1, 1.0))
    compare(
        "hole filling per slice",
        lambda: fill_holes(head, per_slice=True),
        lambda: np.stack(
            [ndimage.binary_fill_holes(head[:, :, k]) for k in range(shape[2])], axis=2
        ),
        args.runs,
    )
    brain = brain_mask.extract_brain(study, MODELS)
    template = brain_mask.load_mni_template(MODELS)
    compare(
        "template warp (dilated)",
        lambda: brain_mask._on_study_grid(
            template.dilated, template, (affine, shape), brain.subject_to_mni
        ),
        lambda: resample(
            template.dilated, template.affine, affine, shape, transform=brain.subject_to_mni
        ),
        args.runs,
    )
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    compare(
        "provisional mask",
        lambda: brain_mask.provisional_mask(t1, affine, head),
        lambda: brain_mask._provisional_in_box(t1, zooms, head),
        args.runs,
    )
    align_s, _ = median_seconds(lambda: align_sequences(volumes), args.runs)
    mask_s, _ = median_seconds(lambda: brain_mask.extract_brain(study, MODELS), args.runs)
    print(f"align_sequences median {align_s:.2f} s; extract_brain median {mask_s:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
