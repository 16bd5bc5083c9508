"""``tumorlens-train slices-ensemble``: several trained 2D classifiers -> one ONNX ensemble + card.

The members are ``tumorlens-train slices`` checkpoints trained on the same split (other seeds);
the ensemble averages their logits, on the image and its left-right mirror unless
``--no-mirror``, and keeps the CAM output (:class:`tumorlens_train.nets2d.SliceEnsemble`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tumorlens_train import export, slices
from tumorlens_train.commands_slices import MODEL_NAME

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "slices-ensemble", help="export several 2D classifiers as one ONNX ensemble"
    )
    p.add_argument(
        "--member",
        type=Path,
        action="append",
        required=True,
        help="checkpoint of one member (tumorlens-train slices WORK_DIR/best.pt); repeatable",
    )
    p.add_argument(
        "--no-mirror",
        dest="mirror",
        action="store_false",
        help="run each member on the image only (default: also on its left-right mirror)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"folder of class folders (default $TUMORLENS_DATA/{slices.DATASET_SUBDIR})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("models/tumorlens_zoo"),
        help="where the ONNX and card go; OUT/NAME.split.json must be the members' split",
    )
    p.add_argument(
        "--previous-card",
        type=Path,
        default=None,
        help="card of an earlier release whose members' training records (all stages, "
        "per-epoch validation) are reused for members whose training folders are gone",
    )
    p.add_argument("--name", default=MODEL_NAME)
    p.add_argument("--version", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    split_file = args.out / f"{args.name}.split.json"
    card = export.export_ensemble(
        checkpoints=args.member,
        out_dir=args.out,
        name=args.name,
        version=args.version,
        data_dir=args.data or slices.default_data_dir(),
        split_file=split_file,
        mirror=args.mirror,
        threads=args.threads,
        previous_card=args.previous_card,
    )
    log.info("wrote %s", card)
    return 0
