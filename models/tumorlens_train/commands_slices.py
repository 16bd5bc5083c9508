"""``tumorlens-train slices``: train the 2D tumour-type classifier, export ONNX + model card."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tumorlens_train import export, slices, train_slices
from tumorlens_train.nets2d import NetConfig

log = logging.getLogger(__name__)

MODEL_NAME = "slice_type_2d"


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "slices", help="train + export the 2D tumour-type classifier"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder of class folders (default $TUMORLENS_DATA/"
        f"{slices.DATASET_SUBDIR}, TUMORLENS_DATA defaulting to ../shared/data)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("models/tumorlens_zoo"),
        help="where the ONNX, model card and split file go",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("out/train/slices"),
        help="checkpoints and history (not shipped)",
    )
    p.add_argument("--name", default=MODEL_NAME)
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--size", type=int, default=128, help="input side in pixels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak one-cycle learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--widths", default="32,64,128,256", help="channels per stage")
    p.add_argument("--blocks", default="1,2,2,1", help="residual blocks per stage")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for training")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=slices.SPLIT_SEED)
    p.add_argument("--val-fraction", type=float, default=slices.VAL_FRACTION)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/last.pt")
    p.add_argument(
        "--init-from", type=Path, help="start from this checkpoint's weights (fine-tuning)"
    )
    p.add_argument(
        "--checkpoint",
        choices=train_slices.CHECKPOINT_CHOICES,
        default="best",
        help="epoch to export: best validation accuracy (the split then chooses and judges, "
        "optimistic) or the final epoch of the fixed schedule (the split only measures)",
    )
    p.add_argument(
        "--export-only", action="store_true", help="skip training; export WORK_DIR/best.pt"
    )
    p.add_argument("--limit-per-class", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def run(args: argparse.Namespace) -> int:
    data_dir = args.data or slices.default_data_dir()
    split_file = args.out / f"{args.name}.split.json"
    if not args.export_only:
        widths, blocks = _ints(args.widths), _ints(args.blocks)
        strides = (2,) * (len(widths) - 1) + (1,)
        cfg = train_slices.TrainConfig(
            data_dir=data_dir,
            work_dir=args.work_dir,
            split_file=split_file,
            size=args.size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            bf16=args.bf16,
            threads=args.threads,
            seed=args.seed,
            split_seed=args.split_seed,
            val_fraction=args.val_fraction,
            device=args.device,
            resume=args.resume,
            limit_per_class=args.limit_per_class,
            init_from=args.init_from,
            checkpoint=args.checkpoint,
            net=NetConfig(
                num_classes=len(slices.CLASSES), widths=widths, blocks=blocks, strides=strides
            ),
        )
        result = train_slices.train(cfg)
        log.info(
            "best epoch %d, validation accuracy %.4f", result.best_epoch, result.best_val_accuracy
        )
    card = export.export_checkpoint(
        checkpoint=args.work_dir / "best.pt",
        out_dir=args.out,
        name=args.name,
        version=args.version,
        data_dir=data_dir,
        split_file=split_file,
        threads=args.threads,
    )
    log.info("wrote %s", card)
    return 0
