"""Write phantoms in the BraTS 2019/2020 folder layout and read them back.

``<out>/<case_id>/<case_id>_{t1,t1ce,t2,flair,seg}.nii.gz`` plus ``<case_id>/meta.json``, and a
dataset index ``<out>/cases.json``. Images are int16 scanner units, the label map uint8 with
BraTS labels 0/1/2/4 (enhancing = 4, as in the BraTS files; models use 3 internally, see
:mod:`.labels`). Every file of a case shares one RAS affine (voxel -> mm).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from .contrast import SEQUENCES
from .generate import Phantom
from .labels import brats_to_internal, internal_to_brats

FILE_KINDS = (*SEQUENCES, "seg")
INDEX_NAME = "cases.json"
META_NAME = "meta.json"

BRATS_LABELS = {
    "0": "background",
    "1": "necrotic or non-enhancing tumour core (NCR/NET)",
    "2": "peritumoural oedema (ED)",
    "4": "enhancing tumour (ET); internal label 3",
}


def case_paths(out_dir: Path, case_id: str) -> dict[str, Path]:
    """Paths of a case's NIfTI files keyed by kind (t1, t1ce, t2, flair, seg)."""
    folder = Path(out_dir) / case_id
    return {kind: folder / f"{case_id}_{kind}.nii.gz" for kind in FILE_KINDS}


def _save_nifti(data: npt.NDArray[Any], affine: npt.NDArray[np.float64], path: Path) -> None:
    img = nib.Nifti1Image(data, affine)  # type: ignore[no-untyped-call]
    img.header.set_xyzt_units("mm", "sec")  # type: ignore[no-untyped-call]
    img.set_qform(affine, code=1)  # type: ignore[no-untyped-call]  # scanner anatomical, RAS
    img.set_sform(affine, code=1)  # type: ignore[no-untyped-call]
    tmp = path.with_name(path.name.replace(".nii.gz", ".tmp.nii.gz"))
    nib.save(img, tmp)
    os.replace(tmp, path)  # a killed run never leaves a truncated file under the final name


def _write_json(data: Any, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The per-case fields kept in the dataset index."""
    keys = ("case_id", "seed", "tumour_type", "grade", "lesion_count", "volumes_ml", "full_head")
    return {k: meta[k] for k in keys if k in meta}


def write_case(phantom: Phantom, out_dir: Path, case_id: str) -> dict[str, Any]:
    """Write one case; returns its metadata (as stored in ``meta.json``)."""
    paths = case_paths(out_dir, case_id)
    paths["seg"].parent.mkdir(parents=True, exist_ok=True)
    for name in SEQUENCES:
        data = np.clip(np.rint(phantom.images[name]), 0, np.iinfo(np.int16).max).astype(np.int16)
        _save_nifti(data, phantom.affine, paths[name])
    _save_nifti(internal_to_brats(phantom.seg), phantom.affine, paths["seg"])
    meta = {
        "case_id": case_id,
        **phantom.metadata,
        "files": {kind: path.name for kind, path in paths.items()},
        "labels": BRATS_LABELS,
        "affine": np.round(phantom.affine, 6).tolist(),
    }
    _write_json(meta, paths["seg"].parent / META_NAME)
    return meta


def write_index(out_dir: Path, metas: Iterable[dict[str, Any]]) -> Path:
    """Merge case summaries into ``<out>/cases.json`` (keeps cases from earlier runs)."""
    path = Path(out_dir) / INDEX_NAME
    cases: dict[str, dict[str, Any]] = {}
    if path.exists():
        cases = {c["case_id"]: c for c in json.loads(path.read_text()).get("cases", [])}
    for meta in metas:
        cases[meta["case_id"]] = summary(meta)
    index = {
        "format": "BraTS 2019/2020 layout; seg labels 0/1/2/4",
        "labels": BRATS_LABELS,
        "cases": [cases[k] for k in sorted(cases)],
    }
    _write_json(index, path)
    return path


def read_case(
    case_dir: Path,
) -> tuple[
    dict[str, npt.NDArray[Any]], npt.NDArray[np.uint8], npt.NDArray[np.float64], dict[str, Any]
]:
    """Load a written case: images, internal labels (0-3), affine and metadata."""
    case_dir = Path(case_dir)
    paths = case_paths(case_dir.parent, case_dir.name)
    images = {n: np.asarray(_load_nifti(paths[n]).dataobj) for n in SEQUENCES}
    seg_img = _load_nifti(paths["seg"])
    seg = brats_to_internal(np.asarray(seg_img.dataobj))
    meta = json.loads((case_dir / META_NAME).read_text())
    return images, seg, np.asarray(seg_img.affine, dtype=np.float64), meta


def _load_nifti(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    if not isinstance(img, nib.Nifti1Image):
        raise TypeError(f"{path} is not a NIfTI image")
    return img
