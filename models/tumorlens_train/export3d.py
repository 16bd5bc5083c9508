"""Export the 3D tumour model to ONNX (reusing :mod:`tumorlens_train.export`'s opset, tolerance and
size limit), prove ONNX Runtime reproduces PyTorch, and write the model card with held-out
metrics measured by the runtime evaluation code on the shipped file."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from tumorlens.inference.card import sha256_file
from tumorlens.inference.preprocess3d import SEQUENCES, GridSpec
from tumorlens.inference.refine import BOUNDARY_REFINEMENT, BoundaryRefinement
from tumorlens.inference.volume_model import (
    MIN_COMPONENT_ML,
    MIN_ENHANCING_ML,
    SEG_LOGIT_OFFSETS,
)
from tumorlens_train.export import (
    MAX_BYTES,
    OPSET,
    TOLERANCE,
    TOLERANCE_RULE,
    check_tolerance,
    compare_with_torch,
    export_module,
)
from tumorlens_train.nets3d import (
    SEG_CLASSES,
    TYPE_CLASSES,
    TumourNet3d,
    count_parameters,
    for_export,
)
from tumorlens_train.nets3d import load_checkpoint as load_net

if TYPE_CHECKING:
    from tumorlens.evaluation.volumes import VolumeReport

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("seg_logits", "type_logits", "type_features")

SNOMED_NOTE = (
    "SNOMED CT concept IDs chosen by the model developers, not by a terminologist; they must be "
    "checked by a terminologist before any use outside research."
)

SEG_LABELS: tuple[dict[str, Any], ...] = (
    {"index": 0, "name": "background", "display": "Background / no tumour", "snomed_ct": None},
    {
        "index": 1,
        "name": "core",
        "display": "Necrotic or non-enhancing tumour core (BraTS NCR/NET)",
        "brats_label": 1,
        "snomed_ct": {
            "code": "6574001",
            "display": "Necrosis (morphologic abnormality)",
            "note": "covers the necrotic part only; non-enhancing solid tumour has no single "
            "better concept here",
        },
    },
    {
        "index": 2,
        "name": "oedema",
        "display": "Peritumoural oedema (BraTS ED)",
        "brats_label": 2,
        "snomed_ct": {"code": "2218006", "display": "Cerebral edema (disorder)"},
    },
    {
        "index": 3,
        "name": "enhancing",
        "display": "Enhancing tumour (BraTS ET; label 4 in BraTS 2019-2021 files, 3 in 2023)",
        "brats_label": 4,
        "snomed_ct": {
            "code": "108369006",
            "display": "Neoplasm (morphologic abnormality)",
            "note": "no pre-coordinated concept for 'contrast-enhancing tumour'; the "
            "enhancement is an imaging property, recorded in 'display'",
        },
    },
)

TYPE_LABELS: tuple[dict[str, Any], ...] = (
    {
        "name": "healthy",
        "display": "No tumour",
        "snomed_ct": {"code": "260413007", "display": "None (qualifier value)"},
    },
    {
        "name": "hgg",
        "display": "High-grade glioma",
        "snomed_ct": {
            "code": "393563007",
            "display": "Glioma (disorder)",
            "note": "no high-grade-specific concept chosen: the grade is carried by "
            "'display' and the grade output; a terminologist should pick a grade qualifier",
        },
    },
    {
        "name": "lgg",
        "display": "Low-grade glioma",
        "snomed_ct": {
            "code": "393563007",
            "display": "Glioma (disorder)",
            "note": "no low-grade-specific concept chosen: the grade is carried by "
            "'display' and the grade output; a terminologist should pick a grade qualifier",
        },
    },
    {
        "name": "metastasis",
        "display": "Metastatic neoplasm to brain",
        "snomed_ct": {"code": "94225005", "display": "Metastatic malignant neoplasm to brain"},
    },
    {
        "name": "meningioma",
        "display": "Meningioma",
        "snomed_ct": {"code": "302820008", "display": "Intracranial meningioma (disorder)"},
    },
    {
        "name": "pituitary",
        "display": "Pituitary adenoma",
        "snomed_ct": {"code": "254956000", "display": "Pituitary adenoma (disorder)"},
    },
)


def export_onnx(model: TumourNet3d, path: Path, shape: tuple[int, int, int]) -> None:
    """The graph of :func:`~tumorlens_train.nets3d.for_export` (instance norms as staged
    reductions); :func:`verify_onnx` compares it with the trained module itself."""
    dummy = torch.zeros(1, model.config.in_channels, *shape)
    export_module(
        for_export(model), dummy, path, input_name=INPUT_NAME, output_names=tuple(OUTPUT_NAMES)
    )
    if path.stat().st_size > MAX_BYTES:
        raise RuntimeError(f"{path} is larger than {MAX_BYTES} bytes")


def verify_onnx(
    model: TumourNet3d, path: Path, inputs: NDArray[np.float32], threads: int = 2
) -> dict[str, float]:
    """Max |ORT - torch| per output (fp32, CPU); raises above the export tolerance. Also checks
    the CAM recipe: mean(sum_c W F) + b == type_logits."""
    diffs, ort_out, peaks = compare_with_torch(
        model, path, inputs, INPUT_NAME, OUTPUT_NAMES, threads=threads
    )
    weights = model.type_head.weight.detach().numpy()
    bias = model.type_head.bias.detach().numpy()
    feats = np.asarray(ort_out[2])
    rebuilt = np.einsum("ncxyz,kc->nkxyz", feats, weights).mean(axis=(2, 3, 4)) + bias
    diffs["cam_rebuilt_type_logits"] = float(np.abs(rebuilt - ort_out[1]).max())
    return check_tolerance(diffs, peaks)


def _first_case(folder: Path, grid: GridSpec) -> NDArray[np.float32] | None:
    """The first case of ``folder`` through the runtime preprocessing, as a verification input
    (realistic intensities and large background, unlike random noise)."""
    from tumorlens.evaluation.volumes import find_cases
    from tumorlens_train.volumes import prepare_case

    cases = find_cases(folder)
    if not cases:
        return None
    return prepare_case(cases[0], grid).image.astype(np.float32)[None]


def build_card(
    *,
    name: str,
    version: str,
    onnx_path: Path,
    model: TumourNet3d,
    ckpt: dict[str, Any],
    verification: dict[str, Any],
) -> dict[str, Any]:
    train = ckpt.get("train", {})
    grid = GridSpec.from_dict(train.get("grid", GridSpec().to_dict()))
    bottleneck = [s // 2 ** (model.config.levels - 1) for s in grid.shape]
    mni = grid.placement == "mni"
    preprocessing: dict[str, Any] = {
        "function": "tumorlens.inference.preprocess3d.preprocess_arrays (preprocess_files "
        "for NIfTI files)",
        "resample": f"trilinear by physical coordinates (each file's affine) onto an "
        f"isotropic {grid.spacing} mm grid of {list(grid.shape)} voxels",
        "placement": "centred on the reference sequence's foreground bounding box in x and y; "
        "top of the grid top_margin_mm above the highest foreground voxel (reference: t1ce, "
        "else flair, t2, t1)",
        "normalisation": "per-channel z-score over the union foreground mask, 0 outside, "
        f"clipped to +-{grid.clip}",
        "missing_sequence": "all-zero channel (no presence mask input)",
    }
    if mni:
        preprocessing.update(
            placement="fixed in MNI space (ICBM152 2009a): grid voxel -> MNI mm is "
            f"diag({grid.spacing} mm) centred on {list(grid.mni_centre_mm)} mm "
            "(tumorlens.inference.preprocess3d.mni_grid); for a study the grid affine is "
            "inv(subject_to_mni) @ that, with subject_to_mni from the runtime brain extraction "
            "(tumorlens.pipeline.brain_mask.extract_brain: template brain mask registered "
            "7 DOF to an intensity-based brain mask, or the heuristic's scale-only start when "
            "the fit is rejected). Required: without subject_to_mni preprocessing raises "
            "VolumeError",
            normalisation="skull stripping: brain mask (extract_brain, on the study grid) "
            f"resampled to the model grid and dilated by {grid.mask_dilation_mm} mm; per-"
            "channel z-score over the mask's voxels inside that sequence's field of view, 0 "
            f"outside the mask, clipped to +-{grid.clip}. Without a brain mask: union "
            "foreground as for head-placed grids (not what the model was trained on)",
            brain_extraction="evaluation and training run the same extract_brain on each "
            "case's sequences (tumorlens.evaluation.volumes.case_brain), so the registration "
            "error and mask quality of the runtime are in the training data and the metrics",
        )
    return {
        "schema": "tumorlens.model-card-3d/1",
        "name": name,
        "version": version,
        "task": "3D brain MRI: tumour sub-region segmentation (BraTS labels) + tumour type / "
        "glioma grade, one network with two heads",
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "size_bytes": onnx_path.stat().st_size,
        "format": {"onnx_opset": OPSET, "ir_version": onnx.load(str(onnx_path)).ir_version},
        "intended_use": (
            "Research use only, not for diagnosis. Not a medical device; outputs must not inform "
            "patient care. Trained ONLY on synthetic phantoms (tumorlens_train.phantoms, built "
            "on the MNI ICBM152 template); performance on real MRI is unknown and, from one "
            "real case looked at, poor (see limitations)."
        ),
        "inputs": [
            {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": ["N", len(SEQUENCES), *grid.shape],
                "channels": list(SEQUENCES),
                "channel_meaning": "T1, T1 post-contrast (T1c), T2, T2-FLAIR",
                "grid": grid.to_dict(),
                "orientation": "RAS (x: left->right, y: posterior->anterior, z: inferior->"
                "superior), "
                + (
                    "axis-aligned in MNI space (the subject resampled through subject_to_mni)"
                    if mni
                    else "axis-aligned in the study's own scanner/world coordinates"
                ),
                "preprocessing": preprocessing,
                "supported_sequence_subsets": {
                    "measured": "all four (t1, t1ce, t2, flair); see metrics for others if listed",
                    "trained_with_dropout": "each channel dropped with p=0.15, at most two, "
                    "never t1ce+t2+flair together; such subsets run but are not validated "
                    "unless listed in metrics",
                },
            }
        ],
        "outputs": [
            {
                "name": "seg_logits",
                "shape": ["N", len(SEG_CLASSES), *grid.shape],
                "meaning": "per-voxel logits over segmentation_labels on the model grid; "
                "softmax, resample probabilities to the study grid (trilinear), argmax "
                "(tumorlens.inference.preprocess3d.probabilities_to_native)",
            },
            {
                "name": "type_logits",
                "shape": ["N", len(TYPE_CLASSES)],
                "meaning": "tumour type logits over labels; grade P(HGG) = p_hgg / (p_hgg + "
                "p_lgg) (only meaningful for gliomas)",
            },
            {
                "name": "type_features",
                "shape": [
                    "N",
                    model.config.type_head_width or model.config.widths[-1],
                    *bottleneck,
                ],
                "meaning": "the maps the type head averages (conv type head on the bottleneck "
                "when type_head_width > 0): input for class activation maps (CAM)",
            },
        ],
        "segmentation_labels": list(SEG_LABELS),
        "regions": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
        "labels": [{"index": i, **lb} for i, lb in enumerate(TYPE_LABELS)],
        "snomed_ct_note": SNOMED_NOTE,
        "cam": {
            "recipe": "CAM_k = sum_c weights[k][c] * type_features[n, c]; type_logits[n, k] = "
            "mean_xyz(CAM_k) + bias[k]",
            "weights": model.type_head.weight.detach().numpy().astype(float).tolist(),
            "bias": model.type_head.bias.detach().numpy().astype(float).tolist(),
            "stride_voxels": 2 ** (model.config.levels - 1),
        },
        "architecture": {
            "name": "TumourNet3d (3D U-Net, instance norm; type head: conv + ReLU on the "
            "bottleneck, GAP + linear)",
            "parameters": count_parameters(model),
            **model.config.to_dict(),
        },
        "training": {
            "data": train.get("data"),
            "split": {
                "train": "phantom dataset seed 0 (case seeds SeedSequence([0, i])), all but "
                "the last val_count cases",
                "validation": "last val_count cases of the training folder (checkpoint "
                "selection only)",
                "held_out_test": "phantom dataset seed 100000 (case seeds SeedSequence("
                "[100000, i])), never used for training or selection",
            },
            "steps": ckpt.get("step"),
            # "best": the validation cases chose this step; "last": final step of the schedule
            "checkpoint_selection": ckpt.get("selection", "best"),
            "validation_at_best": ckpt.get("val"),
            "type_head_stage2": {
                k: v for k, v in (ckpt.get("type_head_stage2") or {}).items() if k != "history"
            },
            "config": {k: v for k, v in train.items() if k not in ("data",)},
            "loss": "cross-entropy"
            + (
                f" (tumour voxels weighted x{train['ce_tumour_weight']})"
                if train.get("ce_tumour_weight", 1.0) != 1.0
                else ""
            )
            + " + soft Dice on WT/TC/ET regions"
            + (" over the batch" if train.get("batch_dice") else " per case")
            + f"; type cross-entropy x {train.get('type_weight')}",
            "optimiser": "AdamW, cosine LR over the step/time budget, 50-step warm-up",
            "torch": torch.__version__,
            "platform": platform.machine(),
        },
        "verification": verification,
        "limitations": [
            "Synthetic training data only: phantoms share one template anatomy and a simple "
            "signal model; real scanners, artefacts and anatomy differ.",
            "Model grid 3 mm: thin structures (enhancing rims) are blurred; Dice is measured "
            "at the label file's native resolution after resampling back.",
            (
                "Grid placed in MNI space by the runtime brain extraction (7-DOF fit of the "
                "template brain mask); a failed or rejected fit (heuristic fallback: scale "
                "only, no rotation) misplaces the grid and the mask; tumour outside the "
                "dilated brain mask (extra-axial beyond the dura, skull base; the mask does "
                "include the pituitary fossa) is invisible to the model."
                if mni
                else "Grid placement from the head foreground only, no registration; tilted "
                "or partially covered heads are placed approximately."
            ),
        ],
    }


def postprocessing_entry(
    min_component_ml: float,
    min_enhancing_ml: float,
    *,
    seg_logit_offsets: Sequence[float] | None = None,
    refinement: BoundaryRefinement | None = None,
) -> dict[str, Any]:
    """The card's ``postprocessing`` block (empty when no step is on), in the runtime's order."""
    post: dict[str, Any] = {}
    rules = []
    if seg_logit_offsets is not None and any(float(v) != 0.0 for v in seg_logit_offsets):
        post[SEG_LOGIT_OFFSETS] = [float(v) for v in seg_logit_offsets]
        rules.append(
            "seg_logit_offsets (background, core, oedema, enhancing) are added to the "
            "segmentation logits before the softmax "
            "(tumorlens.inference.volume_model.seg_probabilities)"
        )
    if min_component_ml > 0:
        post[MIN_COMPONENT_ML] = min_component_ml
        rules.append(
            "tumour components (argmax not background, 26-connected) smaller than "
            "min_tumour_component_ml become background "
            "(tumorlens.inference.volume_model.drop_small_tumour_components)"
        )
    if min_enhancing_ml > 0:
        post[MIN_ENHANCING_ML] = min_enhancing_ml
        rules.append(
            "then, when all enhancing tumour together is smaller than min_enhancing_ml, it is "
            "relabelled as tumour core (tumorlens.inference.volume_model.merge_small_enhancement)"
        )
    if rules:
        post["rule"] = (
            "on the model grid, before resampling to the study: "
            + "; ".join(rules)
            + "; the held-out metrics below include it"
        )
    if refinement is not None:
        post[BOUNDARY_REFINEMENT] = refinement.to_dict() | {
            "rule": (
                "on the study's grid, after resampling: where the upsampled probability of a "
                "boundary's inside is between uncertain and 1 - uncertain, the boundary (whole "
                "tumour / background, then core / oedema, then enhancing / core) is redrawn "
                "from the model's logit plus strength x the log-likelihood ratio of a linear "
                "discriminant fitted to that study's confident voxels within sample_band_mm on "
                "both sides, smoothed by a Gaussian of smoothing_mm, only within max_shift_mm "
                "of the model's boundary (no cap when absent); each refined region keeps only "
                "components that contain a voxel of the model's own region "
                "(tumorlens.inference.refine); the held-out metrics include it"
            )
        }
    return post


def export_checkpoint(
    *,
    checkpoint: Path,
    out_dir: Path,
    name: str,
    version: str,
    heldout: Path | None = None,
    heldout_subsets: Sequence[Sequence[str]] = (),
    threads: int = 2,
    verify_real: NDArray[np.float32] | None = None,
    min_component_ml: float = 0.0,
    min_enhancing_ml: float = 0.0,
    template_dir: Path | None = None,
) -> Path:
    """``best.pt`` -> ``<out>/<name>.onnx`` + ``<out>/<name>.json``; returns the card path.

    With ``heldout`` the card gets held-out metrics on all four sequences and on each of
    ``heldout_subsets``, and lists exactly those subsets as ``validated_subsets`` (which the
    worker reads: a study analysed on another subset gets a note). The held-out cases' brain
    extraction reads the MNI template beside the card, else in ``template_dir``; a held-out
    run that could score no case is an error, not a card without metrics."""
    model, ckpt = load_net(str(checkpoint))
    grid = GridSpec.from_dict(ckpt.get("train", {}).get("grid", GridSpec().to_dict()))
    onnx_path = out_dir / f"{name}.onnx"
    card_path = out_dir / f"{name}.json"
    export_onnx(model, onnx_path, grid.shape)
    rng = np.random.default_rng(0)
    random = rng.standard_normal((2, model.config.in_channels, *grid.shape)).astype(np.float32)
    verification: dict[str, Any] = {
        "tolerance": TOLERANCE,
        "tolerance_rule": TOLERANCE_RULE,
        "max_abs_diff_random": verify_onnx(model, onnx_path, random, threads),
        "onnxruntime": ort.__version__,
    }
    if verify_real is None and heldout is not None and heldout.is_dir():
        verify_real = _first_case(heldout, grid)
    if verify_real is not None:
        verification["max_abs_diff_real"] = verify_onnx(model, onnx_path, verify_real, threads)
    log.info("ONNX Runtime matches PyTorch: %s", verification)
    card = build_card(
        name=name,
        version=version,
        onnx_path=onnx_path,
        model=model,
        ckpt=ckpt,
        verification=verification,
    )
    post = postprocessing_entry(min_component_ml, min_enhancing_ml)
    if post:
        card["postprocessing"] = post
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    if heldout is not None and heldout.is_dir():
        measure_heldout(
            card,
            card_path,
            heldout,
            heldout_subsets,
            template_dir=out_dir if template_dir is None else template_dir,
            threads=threads,
        )
    return card_path


def heldout_entry(
    report: VolumeReport, dataset: Path, sequences: Sequence[str], threads: int
) -> dict[str, Any]:
    """A card's ``metrics.held_out_phantoms_*`` entry: an evaluation report without its
    per-case rows, with what it was measured on."""
    metrics = report.to_dict()
    metrics.pop("cases", None)
    metrics["dataset"] = str(dataset)
    metrics["sequences"] = list(sequences)
    metrics["runtime"] = f"onnxruntime {ort.__version__} CPU, {threads} threads, batch 1"
    return metrics


def measure_heldout(
    card: dict[str, Any],
    card_path: Path,
    heldout: Path,
    heldout_subsets: Sequence[Sequence[str]],
    *,
    template_dir: Path,
    threads: int = 2,
) -> None:
    """Score the model of ``card_path`` (as written, post-processing included) on ``heldout``
    with all four sequences and each subset; write ``metrics.held_out_phantoms_*`` and
    ``validated_subsets`` into ``card`` and the file. A run scoring no case is an error."""
    from tumorlens.evaluation.volumes import evaluate_volumes

    card["metrics"] = {}
    validated: list[list[str]] = []
    for subset in (tuple(SEQUENCES), *(tuple(sub) for sub in heldout_subsets)):
        unknown = set(subset) - set(SEQUENCES)
        if unknown:
            raise ValueError(f"unknown sequences {sorted(unknown)}; expected {SEQUENCES}")
        report, _ = evaluate_volumes(
            heldout, card_path, template_dir, threads=threads, sequences=subset
        )
        if report.n_cases == 0:
            reasons = sorted({item["reason"] for item in report.skipped})
            raise RuntimeError(
                f"held-out evaluation of {heldout} scored no case"
                f" ({report.n_skipped} skipped: {'; '.join(reasons[:3])})"
            )
        key = "all_sequences" if len(subset) == len(SEQUENCES) else "_".join(subset) + "_only"
        card["metrics"][f"held_out_phantoms_{key}"] = heldout_entry(
            report, heldout, subset, threads
        )
        validated.append(list(subset))
    spec = card["inputs"][0]
    spec["validated_subsets"] = validated
    spec["supported_sequence_subsets"]["measured"] = (
        "; ".join("+".join(sub) for sub in validated)
        + " (held-out metrics); listed in validated_subsets, which the worker reads: "
        "other subsets run with a note in the report"
    )
    card_path.write_text(json.dumps(card, indent=1) + "\n")
