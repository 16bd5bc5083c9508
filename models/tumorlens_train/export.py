"""Export a trained slice classifier to ONNX, prove ONNX Runtime reproduces PyTorch, and write
the model card (with validation metrics measured by the runtime evaluation code itself)."""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from tumorlens.evaluation.report import build_report
from tumorlens.evaluation.slices import (
    collect_images,
    evaluate_slices,
    predict,
    read_split_names,
)
from tumorlens.inference.cam import class_activation_maps
from tumorlens.inference.card import load_card, sha256_file
from tumorlens.inference.preprocess import preprocess_file
from tumorlens.inference.session import create_session
from tumorlens_train import slices
from tumorlens_train.nets2d import SliceEnsemble, SliceNet, count_parameters, load_checkpoint

SliceModel = SliceNet | SliceEnsemble

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4
#: Feature-map outputs: the input of class activation maps, which the runtime divides by their
#: peak, so their scale is arbitrary (the 3D bottleneck reaches ~30). They are held to
#: TOLERANCE relative to that scale; logits, on which decisions are made, absolutely.
FEATURE_OUTPUTS = frozenset({"features", "type_features"})
TOLERANCE_RULE = (
    "max |ORT - torch| <= tolerance for logits; <= tolerance x max(1, max |torch|) for "
    "feature maps (CAM input, normalised by its peak at run time)"
)
MAX_BYTES = 50 * 1024 * 1024
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "features")

# Index order = training label order = slices.CLASSES.
LABELS: tuple[dict[str, Any], ...] = (
    {
        "name": "glioma",
        "display": "Glioma",
        "snomed_ct": {"code": "393563007", "display": "Glioma (disorder)"},
        "aliases": ["glioma_tumor", "glioma_tumour"],
    },
    {
        "name": "meningioma",
        "display": "Meningioma",
        "snomed_ct": {"code": "302820008", "display": "Intracranial meningioma (disorder)"},
        "aliases": ["meningioma_tumor", "meningioma_tumour"],
    },
    {
        "name": "notumor",
        "display": "No tumour",
        "snomed_ct": {
            "code": "260413007",
            "display": "None (qualifier value)",
            "note": "Qualifier value meaning 'none' for the finding 'brain tumour'. Not "
            "281900007 'No abnormality detected (finding)': the class only excludes the "
            "three tumour types, not every abnormality.",
        },
        "aliases": ["no_tumor", "no_tumour", "notumour", "no"],
    },
    {
        "name": "pituitary",
        "display": "Pituitary adenoma",
        "snomed_ct": {"code": "254956000", "display": "Pituitary adenoma (disorder)"},
        "aliases": ["pituitary_tumor", "pituitary_tumour", "pituitary_adenoma"],
    },
)


def export_module(
    model: torch.nn.Module,
    dummy: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    output_names: tuple[str, ...],
    opset: int = OPSET,
) -> None:
    """TorchScript-based export with a dynamic batch axis, then the full ONNX checker.

    The TorchScript exporter is chosen on purpose: the dynamo one needs onnxscript.
    """
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes={name: {0: "N"} for name in (input_name, *output_names)},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def export_onnx(model: SliceModel, path: Path, size: int, opset: int = OPSET) -> None:
    """The 2D model: input [N, C, size, size]; outputs logits and CAM feature maps."""
    dummy = torch.zeros(1, model.config.in_channels, size, size)
    export_module(
        model, dummy, path, input_name=INPUT_NAME, output_names=tuple(OUTPUT_NAMES), opset=opset
    )


def compare_with_torch(
    model: torch.nn.Module,
    path: Path,
    inputs: NDArray[np.float32],
    input_name: str,
    output_names: Sequence[str],
    *,
    threads: int = 2,
) -> tuple[dict[str, float], list[NDArray[Any]], dict[str, float]]:
    """Max absolute difference per output between ORT (CPU) and PyTorch eager on ``inputs``,
    the ORT outputs (for further checks) and max |torch| per output. Shared by the 2D and 3D
    exports."""
    session = create_session(path, threads=threads, prefer_gpu=False)
    ort_out = [np.asarray(a) for a in session.run(list(output_names), {input_name: inputs})]
    with torch.no_grad():
        torch_out = [t.numpy() for t in model.eval()(torch.from_numpy(inputs))]
    diffs = {
        name: float(np.abs(a - b).max())
        for name, a, b in zip(output_names, ort_out, torch_out, strict=True)
    }
    peaks = {name: float(np.abs(b).max()) for name, b in zip(output_names, torch_out, strict=True)}
    return diffs, ort_out, peaks


def check_tolerance(
    diffs: dict[str, float], peaks: dict[str, float] | None = None
) -> dict[str, float]:
    """``diffs`` unchanged when they meet :data:`TOLERANCE_RULE`; RuntimeError otherwise."""
    peaks = peaks or {}
    over = {
        name: diff
        for name, diff in diffs.items()
        if diff > TOLERANCE * (max(1.0, peaks.get(name, 1.0)) if name in FEATURE_OUTPUTS else 1.0)
    }
    if over:
        raise RuntimeError(
            f"ONNX Runtime differs from PyTorch by {diffs} (peaks {peaks}; rule: {TOLERANCE_RULE},"
            f" tolerance {TOLERANCE})"
        )
    return diffs


def verify_onnx(
    model: SliceModel, path: Path, inputs: NDArray[np.float32], threads: int = 2
) -> dict[str, float]:
    """Max absolute difference per output between ORT (CPU) and PyTorch; raises when
    :data:`TOLERANCE_RULE` is not met."""
    diffs, _, peaks = compare_with_torch(
        model, path, inputs, INPUT_NAME, OUTPUT_NAMES, threads=threads
    )
    return check_tolerance(diffs, peaks)


def verify_cam(model: SliceModel, path: Path, inputs: NDArray[np.float32]) -> float:
    """Check the CAM recipe: mean_hw(sum_c W_kc F_c) + b_k must equal the logits."""
    session = create_session(path, threads=2, prefer_gpu=False)
    logits, features = session.run(list(OUTPUT_NAMES), {INPUT_NAME: inputs})
    weights = model.head_weight().detach().numpy()
    bias = model.head_bias().detach().numpy()
    rebuilt = class_activation_maps(np.asarray(features), weights).mean(axis=(2, 3)) + bias
    diff = float(np.abs(rebuilt - logits).max())
    if diff > TOLERANCE:
        raise RuntimeError(f"CAM recipe does not reproduce the logits (max diff {diff})")
    return diff


def real_inputs(data_dir: Path, split_file: Path, size: int, count: int = 8) -> NDArray[np.float32]:
    """A few validation slices (two per class where possible), runtime-preprocessed."""
    names = sorted(slices.read_split(split_file)) if split_file.exists() else []
    picked: list[str] = []
    for cls in slices.CLASSES:
        picked += [n for n in names if n.startswith(f"{cls}/")][: max(count // 4, 1)]
    arrays = [preprocess_file(data_dir / n, size) for n in picked if (data_dir / n).exists()]
    return np.stack(arrays) if arrays else np.zeros((0, 1, size, size), np.float32)


def _stage(checkpoint: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = checkpoint.get("train_config", {})
    history_file = work_dir / "history.json"
    history = json.loads(history_file.read_text()) if history_file.exists() else []
    return {
        "size": checkpoint.get("size"),
        "epochs": cfg.get("epochs"),
        # "best": the validation split chose this epoch; "last": the schedule's final epoch
        "checkpoint_selection": checkpoint.get("selection", "best"),
        "best_epoch": checkpoint.get("epoch"),
        "best_val_accuracy": checkpoint.get("val_accuracy"),
        "init_from": cfg.get("init_from"),
        "batch_size": cfg.get("batch_size"),
        "optimiser": f"AdamW (weight decay {cfg.get('weight_decay')} on conv/linear weights)",
        "lr_schedule": f"one-cycle, peak {cfg.get('lr')}, 15% warm-up, cosine anneal",
        "loss": "cross-entropy, inverse-frequency class weights, label smoothing "
        f"{cfg.get('label_smoothing')}",
        "bf16_autocast": cfg.get("bf16"),
        "seconds": round(sum(float(h.get("seconds", 0.0)) for h in history), 1),
        # how much the validation figures move from epoch to epoch (selection's headroom)
        "val_accuracy_by_epoch": [round(float(h["val_accuracy"]), 4) for h in history],
        "val_glioma_recall_by_epoch": [
            round(float(h["val_recall"]["glioma"]), 4) for h in history if "val_recall" in h
        ],
    }


def training_stages(checkpoint_path: Path, checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain of training runs behind a checkpoint, first run first (``init_from`` links)."""
    stages = [_stage(checkpoint, checkpoint_path.parent)]
    parent = checkpoint.get("train_config", {}).get("init_from")
    while parent and Path(parent).is_file() and len(stages) < 10:
        parent_ckpt = torch.load(parent, map_location="cpu", weights_only=True)
        stages.insert(0, _stage(parent_ckpt, Path(parent).parent))
        parent = parent_ckpt.get("train_config", {}).get("init_from")
    return stages


def _stage_key(stage: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(stage.get(k) for k in ("size", "epochs", "best_epoch", "best_val_accuracy"))


def _recorded_epochs(stages: list[dict[str, Any]]) -> tuple[int, int]:
    return len(stages), sum(len(stage.get("val_accuracy_by_epoch") or []) for stage in stages)


def member_stages_from_card(
    seed: Any, stages: list[dict[str, Any]], card: dict[str, Any]
) -> tuple[list[dict[str, Any]], str] | None:
    """The full stage record of a member from the card of an earlier release, or None.

    A committed checkpoint (``models/checkpoints``) lies away from its training folders, so
    :func:`training_stages` sees only its last stage, without per-epoch history. The earlier
    card recorded the whole chain; it is taken when its member has the same seed and the same
    last stage (size, epochs, kept epoch, validation accuracy), i.e. the same weights' run.
    """
    for member in card.get("training", {}).get("members", []):
        recorded = member.get("stages") or []
        same_run = recorded and _stage_key(recorded[-1]) == _stage_key(stages[-1])
        if member.get("seed") == seed and same_run:
            # a record that was itself carried over names its first source
            source = f"{card.get('name')} {card.get('version')} card ({member['checkpoint']})"
            return recorded, str(member.get("stages_from", source))
    return None


def build_card(
    *,
    name: str,
    version: str,
    onnx_path: Path,
    model: SliceModel,
    size: int,
    split_file: Path,
    training: dict[str, Any],
    verification: dict[str, Any],
) -> dict[str, Any]:
    """``training`` holds ``stages`` and ``checkpoint`` (one net) or ``members`` (ensemble)."""
    split: dict[str, Any] = json.loads(split_file.read_text()) if split_file.exists() else {}
    with torch.no_grad():
        _, feats = model(torch.zeros(1, model.config.in_channels, size, size))
    channels, fh, fw = (int(v) for v in feats.shape[1:])
    return {
        "schema": "tumorlens.model-card/1",
        "name": name,
        "version": version,
        "task": "2D MRI slice classification: brain tumour type",
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "size_bytes": onnx_path.stat().st_size,
        "format": {"onnx_opset": OPSET, "ir_version": onnx.load(str(onnx_path)).ir_version},
        "intended_use": (
            "Research use only, not for diagnosis. Not a medical device; outputs must not "
            "inform patient care. Trained on one public 2D JPEG data set of mostly "
            "contrast-enhanced T1 slices; performance on other sequences, scanners or "
            "DICOM-derived slices is unknown."
        ),
        "inputs": [
            {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": ["N", 1, size, size],
                "channels": 1,
                "size": size,
                "shape_rules": (
                    "N is dynamic (>=1); exactly 1 channel; height = width = size. Sources "
                    "must be 1-channel (grey) or 3-channel (RGB, reduced by ITU-R 601-2 luma); "
                    "others are refused."
                ),
                "preprocessing": {
                    "function": "tumorlens.inference.preprocess.preprocess_file",
                    "grey": "RGB -> L by ITU-R 601-2 luma (PIL convert('L')), then float32",
                    "pad": "centre-pad to a square with the image minimum",
                    "resize": f"bilinear, antialiased (PIL) to {size}x{size}",
                    "normalisation": "per-image z-score: (x - mean) / std over all pixels",
                },
            }
        ],
        "outputs": [
            {
                "name": "logits",
                "dtype": "float32",
                "shape": ["N", len(LABELS)],
                "meaning": "unnormalised class scores; softmax gives probabilities",
            },
            {
                "name": "features",
                "dtype": "float32",
                "shape": ["N", channels, fh, fw],
                "meaning": "last convolutional feature maps (after ReLU), input for CAM",
            },
        ],
        "labels": [{"index": i, **label} for i, label in enumerate(LABELS)],
        "cam": {
            "recipe": (
                "CAM_k[h, w] = sum_c weights[k][c] * features[n, c, h, w]; "
                "logits[n, k] = mean_hw(CAM_k) + bias[k]. Upsample the positive part to the "
                "input size (tumorlens.inference.cam)."
            ),
            "grid": [fh, fw],
            "stride": size // fh,
            "weights": model.head_weight().detach().numpy().astype(float).tolist(),
            "bias": model.head_bias().detach().numpy().astype(float).tolist(),
            **(
                {"onnx_initializers": {"weights": "head.weight", "bias": "head.bias"}}
                if isinstance(model, SliceNet)
                else {
                    "views": "features concatenate the views (member x mirror) in that order; "
                    "weights are each member's head weights divided by the number of views"
                }
            ),
        },
        "architecture": _architecture(model),
        "training": {
            "data": {
                "dataset": slices.DATASET_SUBDIR,
                "description": "public brain MRI JPEG slices (glioma, meningioma, no tumour, "
                "pituitary), mostly T1 contrast-enhanced, mixed planes",
                "n_train": split.get("n_train"),
                "n_validation": split.get("n_validation"),
            },
            "split": {
                "file": split_file.name,
                "seed": split.get("seed"),
                "val_fraction": split.get("val_fraction"),
                "method": "stratified by class; " + str(split.get("grouping", "")),
            },
            **training,
            "augmentation": asdict(slices.AugmentConfig()),
            "seconds": round(sum(float(st["seconds"]) for st in all_stages(training)), 1),
            "torch": torch.__version__,
            "platform": platform.machine(),
        },
        "verification": verification,
    }


def _architecture(model: SliceModel) -> dict[str, Any]:
    if isinstance(model, SliceNet):
        return {
            "name": "SliceNet (residual CNN, GAP + linear head)",
            "parameters": count_parameters(model),
            **model.config.to_dict(),
        }
    return {
        "name": f"SliceEnsemble: {len(model.members)} SliceNets, mean logits over members"
        + (" and the left-right mirror image (test-time augmentation)" if model.mirror else ""),
        "members": len(model.members),
        "mirror_views": model.mirror,
        "forward_passes_per_image": model.views,
        "parameters": count_parameters(model),
        "member": model.config.to_dict(),
    }


def all_stages(training: dict[str, Any]) -> list[dict[str, Any]]:
    """Every training stage behind a card's model (all members of an ensemble)."""
    if "members" in training:
        return [st for member in training["members"] for st in member["stages"]]
    return list(training["stages"])


def selection_caveat(stages: list[dict[str, Any]]) -> str:
    """What the validation figures are worth, given how each stage's checkpoint was chosen."""
    common = (
        " Slices of one patient may sit on both sides of the split (the data set has no "
        "patient identifiers)."
    )
    if all(st.get("checkpoint_selection") == "last" for st in stages):
        return (
            "No checkpoint was chosen on the validation split: every stage ran a fixed "
            "schedule and its final epoch was kept, so the split only measures. The recipe "
            "itself (sizes, epochs, learning rates) was settled by earlier runs that were "
            "judged on this split." + common
        )
    return (
        "The validation split also chose the checkpoint (best epoch) of at least one stage, "
        "so these figures are optimistic; there is no independent test set." + common
    )


def export_checkpoint(
    *,
    checkpoint: Path,
    out_dir: Path,
    name: str,
    version: str,
    data_dir: Path,
    split_file: Path,
    threads: int = 2,
) -> Path:
    """``best.pt`` -> ``<out>/<name>.onnx`` + ``<out>/<name>.json``; returns the card path."""
    model, ckpt = load_checkpoint(str(checkpoint))
    training = {"stages": training_stages(checkpoint, ckpt), "checkpoint": str(checkpoint)}
    return _export(
        model,
        int(ckpt["size"]),
        training,
        out_dir=out_dir,
        name=name,
        version=version,
        data_dir=data_dir,
        split_file=split_file,
        threads=threads,
    )


def export_ensemble(
    *,
    checkpoints: Sequence[Path],
    out_dir: Path,
    name: str,
    version: str,
    data_dir: Path,
    split_file: Path,
    mirror: bool = True,
    threads: int = 2,
    previous_card: Path | None = None,
) -> Path:
    """Several trained nets (same input size) -> one ONNX ensemble + card; see
    :class:`SliceEnsemble`. Each member's training stages go into the card; a member whose
    training folders are gone takes them from ``previous_card`` when that card has its run
    (:func:`member_stages_from_card`)."""
    loaded = [load_checkpoint(str(path)) for path in checkpoints]
    split: dict[str, Any] = json.loads(split_file.read_text()) if split_file.exists() else {}
    for path, (_, ckpt) in zip(checkpoints, loaded, strict=True):
        cfg = ckpt.get("train_config", {})
        # A member trained on another split has seen the validation images.
        if (cfg.get("split_seed"), cfg.get("val_fraction")) != (
            split.get("seed"),
            split.get("val_fraction"),
        ):
            raise ValueError(
                f"{path} was trained on split seed {cfg.get('split_seed')} / fraction "
                f"{cfg.get('val_fraction')}, not on {split_file}'s {split.get('seed')} / "
                f"{split.get('val_fraction')}"
            )
    sizes = {int(ckpt["size"]) for _, ckpt in loaded}
    if len(sizes) != 1:
        raise ValueError(f"ensemble members were trained at different sizes: {sorted(sizes)}")
    previous = json.loads(previous_card.read_text()) if previous_card else None
    members: list[dict[str, Any]] = []
    for path, (_, ckpt) in zip(checkpoints, loaded, strict=True):
        seed = ckpt.get("train_config", {}).get("seed")
        member: dict[str, Any] = {"checkpoint": str(path), "seed": seed}
        stages = training_stages(path, ckpt)
        found = member_stages_from_card(seed, stages, previous) if previous else None
        # the earlier record wins only where it knows more (more stages or epochs)
        if found and _recorded_epochs(found[0]) > _recorded_epochs(stages):
            stages, member["stages_from"] = found
        member["stages"] = stages
        members.append(member)
    size = sizes.pop()
    nets = [model for model, _ in loaded]
    card_path = _export(
        SliceEnsemble(nets, mirror=mirror),
        size,
        {"members": members},
        out_dir=out_dir,
        name=name,
        version=version,
        data_dir=data_dir,
        split_file=split_file,
        threads=threads,
    )
    card = json.loads(card_path.read_text())
    if "metrics" in card:
        # What the ensemble adds over its parts, on the same split, so that the card shows it.
        variants: list[tuple[str, SliceModel]] = [
            (f"member {i + 1} alone", net) for i, net in enumerate(nets)
        ]
        variants += [
            (f"member {i + 1} + mirror", SliceEnsemble([net])) for i, net in enumerate(nets)
        ]
        if mirror and len(nets) > 1:
            variants.append(("members without mirror", SliceEnsemble(nets, mirror=False)))
        card["metrics"]["variants"] = [
            {"variant": label, **_variant_metrics(model, card_path, data_dir, split_file, threads)}
            for label, model in variants
        ]
        card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card_path


def _variant_metrics(
    model: SliceModel, card_path: Path, data_dir: Path, split_file: Path, threads: int
) -> dict[str, Any]:
    """Validation accuracy and per-class sensitivity of ``model`` (exported to a scratch ONNX
    file) through the runtime's preprocessing, session and report; ``card_path`` is the
    shipped card, whose inputs and labels every variant shares."""
    card = load_card(card_path)
    images = collect_images(data_dir, card, read_split_names(split_file))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "variant.onnx"
        export_onnx(model, path, card.input_size)
        preds = predict(images, path, card, threads=threads)
    report = build_report(
        card,
        preds.labels,
        preds.logits,
        skipped=preds.skipped,
        inference_seconds=preds.inference_seconds,
        preprocess_seconds=preds.preprocess_seconds,
    ).to_dict()
    return {
        "accuracy": report["accuracy"],
        "sensitivity": {k: v["sensitivity"] for k, v in report["per_class"].items()},
        "ms_per_image": report["ms_per_image"],
    }


def _export(
    model: SliceModel,
    size: int,
    training: dict[str, Any],
    *,
    out_dir: Path,
    name: str,
    version: str,
    data_dir: Path,
    split_file: Path,
    threads: int,
) -> Path:
    onnx_path = out_dir / f"{name}.onnx"
    card_path = out_dir / f"{name}.json"
    export_onnx(model, onnx_path, size)
    if onnx_path.stat().st_size > MAX_BYTES:
        raise RuntimeError(f"{onnx_path} is larger than {MAX_BYTES} bytes")

    rng = np.random.default_rng(0)
    random = rng.standard_normal((4, 1, size, size)).astype(np.float32)
    real = real_inputs(data_dir, split_file, size)
    verification = {
        "tolerance": TOLERANCE,
        "tolerance_rule": TOLERANCE_RULE,
        "max_abs_diff_random": verify_onnx(model, onnx_path, random, threads),
        "max_abs_diff_real": verify_onnx(model, onnx_path, real, threads) if len(real) else None,
        "cam_logit_max_abs_diff": verify_cam(model, onnx_path, np.concatenate([random, real])),
        "onnxruntime": ort.__version__,
    }
    log.info("ONNX Runtime matches PyTorch: %s", verification)

    card = build_card(
        name=name,
        version=version,
        onnx_path=onnx_path,
        model=model,
        size=size,
        split_file=split_file,
        training=training,
        verification=verification,
    )
    card_path.write_text(json.dumps(card, indent=1) + "\n")

    # Validation metrics through the runtime path, on the exact shipped file.
    if split_file.exists() and data_dir.is_dir():
        report, _ = evaluate_slices(
            data_dir, card_path, out_dir, split_file=split_file, threads=threads
        )
        metrics = report.to_dict()
        metrics.pop("model", None)
        metrics["split"] = "validation"
        metrics["caveat"] = selection_caveat(all_stages(training))
        metrics["runtime"] = f"onnxruntime {ort.__version__} CPU, {threads} threads, batch 32"
        card["metrics"] = metrics
        card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card_path
