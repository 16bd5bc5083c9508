"""``tumorlens evaluate``: measure a shipped model on labelled data (research use only).

``slices``: 2D classifier on class folders. ``volumes``: 3D segmentation + type model on
BraTS-layout cases (phantoms, BraTS 2019-2023).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tumorlens.config import load_settings
from tumorlens.evaluation import plots
from tumorlens.evaluation.metrics import softmax
from tumorlens.evaluation.report import format_table
from tumorlens.evaluation.slices import evaluate_slices

DEFAULT_SLICE_MODEL = "slice_type_2d"
DEFAULT_VOLUME_MODEL = "tumour3d"


def _sequence_list(text: str) -> list[str]:
    """``t1ce,flair`` -> names, refusing a typo (it would silently feed zeros for all)."""
    from tumorlens.inference.preprocess3d import SEQUENCES

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SEQUENCES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown sequence(s) {', '.join(unknown) or '(none)'};"
            f" use some of {', '.join(SEQUENCES)}"
        )
    return names


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("evaluate", help="measure a model on labelled data")
    kinds = parser.add_subparsers(dest="kind", required=True)
    _register_slices(kinds)
    _register_volumes(kinds)


def _add_common(p: argparse.ArgumentParser, dir_help: str, model: str, plots: str) -> None:
    """DIR, --model, --json, --plots and --threads, as both kinds take them."""
    p.add_argument("dir", type=Path, metavar="DIR", help=dir_help)
    p.add_argument(
        "--model",
        default=model,
        help="model name in the models directory, or path to its .json card or .onnx file "
        f"(default {model})",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--plots", type=Path, metavar="DIR", help=f"write {plots} PNGs")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: settings)")


def _register_slices(kinds: Any) -> None:
    p = kinds.add_parser(
        "slices",
        help="2D tumour-type classifier on DIR/<class>/*.jpg",
        description="Evaluate the 2D classifier on a folder of class folders "
        "(glioma, meningioma, notumor, pituitary).",
    )
    _add_common(p, "folder holding one folder per class", DEFAULT_SLICE_MODEL, "confusion, ROC")
    p.add_argument("--split-file", type=Path, metavar="F", help="evaluate only the files it lists")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_run_slices)


def _run_slices(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    threads = args.threads if args.threads is not None else settings.inference_threads
    report, preds = evaluate_slices(
        args.dir,
        args.model,
        settings.models_dir,
        split_file=args.split_file,
        batch_size=args.batch_size,
        threads=threads,
    )
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.plots:
        cm_path = plots.confusion_matrix_png(
            np.asarray(report.confusion_matrix, dtype=np.int64),
            report.labels,
            args.plots / "confusion_matrix.png",
        )
        roc_path = plots.roc_png(
            preds.labels, softmax(preds.logits), report.labels, args.plots / "roc.png"
        )
        print(f"plots: {cm_path} {roc_path}")
    return 0


def _register_volumes(kinds: Any) -> None:
    p = kinds.add_parser(
        "volumes",
        help="3D segmentation + type model on BraTS-layout cases",
        description="Evaluate the 3D model on BraTS-layout cases (phantoms, BraTS 2019/2020 "
        "HGG/LGG folders, 2021, 2023): Dice and HD95 for WT/TC/ET, grade AUC/accuracy, type "
        "accuracy. Unreadable or inconsistent cases are skipped and counted.",
    )
    _add_common(
        p, "folder holding the case folders", DEFAULT_VOLUME_MODEL, "overlay, confusion, ROC"
    )
    p.add_argument(
        "--sequences",
        type=_sequence_list,
        help="comma-separated subset of t1,t1ce,t2,flair to feed (others zero); default all",
    )
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N cases")
    p.add_argument(
        "--correct-motion",
        action="store_true",
        help="align each case's sequences as the service does (rigid motion correction onto "
        "the reference sequence) instead of trusting the files' affines; for real data whose "
        "series moved between acquisitions (BraTS and phantoms are co-registered)",
    )
    p.set_defaults(func=_run_volumes)


def _run_volumes(args: argparse.Namespace) -> int:
    from tumorlens.evaluation import volumes

    settings = load_settings(args.config)
    threads = args.threads if args.threads is not None else settings.inference_threads
    sequences = args.sequences or None
    report, preds = volumes.evaluate_volumes(
        args.dir,
        args.model,
        settings.models_dir,
        threads=threads,
        sequences=sequences,
        limit=args.limit,
        correct_motion=args.correct_motion,
    )
    print(volumes.format_volume_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.plots and report.cases:
        written = volumes.write_plots(args.dir, report, preds, args.plots)
        print("plots: " + " ".join(str(p) for p in written))
    return 0
