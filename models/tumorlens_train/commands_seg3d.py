"""``tumorlens-train seg3d``: train the 3D tumour model (segmentation + type, one network with two
heads) on phantoms or BraTS folders, export ONNX + model card.

The commands that made the shipped model are in README.md ("Models") and, with every manual
step, in the model card's ``training.command``; one recipe, kept there.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tumorlens.inference.preprocess3d import GridSpec
from tumorlens_train import export3d, train_volumes, volumes
from tumorlens_train.nets3d import Net3dConfig

log = logging.getLogger(__name__)

MODEL_NAME = "tumour3d"


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "seg3d", help="train + export the 3D tumour segmentation + type model"
    )
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="BraTS-layout training folder (phantoms or BraTS 2019-2023); repeatable",
    )
    p.add_argument("--val-count", type=int, default=16, help="last N cases held for validation")
    p.add_argument("--heldout", type=Path, help="held-out test folder, evaluated into the card")
    p.add_argument(
        "--heldout-subset",
        action="append",
        default=[],
        metavar="SEQ,SEQ",
        help="also evaluate the held-out folder on this sequence subset (e.g. t1ce,flair) and "
        "list it as validated in the card; repeatable",
    )
    p.add_argument("--out", type=Path, default=Path("models/tumorlens_zoo"))
    p.add_argument("--work-dir", type=Path, default=Path("out/train/seg3d"))
    p.add_argument("--name", default=MODEL_NAME)
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget (0: none)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--base", type=int, default=12, help="channels at full resolution")
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--spacing", type=float, default=3.0, help="model grid spacing (mm)")
    p.add_argument("--shape", default="64,80,64", help="model grid shape x,y,z")
    p.add_argument(
        "--placement",
        choices=("head", "mni"),
        default="head",
        help="model grid placement: head foreground, or MNI space from the runtime brain "
        "extraction (skull-stripped input)",
    )
    p.add_argument(
        "--template-dir",
        type=Path,
        default=volumes.TEMPLATE_DIR,
        help="folder with the MNI template (brain extraction for --placement mni)",
    )
    p.add_argument("--warm-start", help="checkpoint to start from (same architecture)")
    p.add_argument(
        "--p-affine",
        type=float,
        default=0.0,
        help="probability of the registration-error augmentation (rotation/scale/shift)",
    )
    p.add_argument(
        "--batch-dice",
        action="store_true",
        help="soft Dice over the whole batch instead of per case (cases without a region "
        "then stop pulling tumour probabilities down)",
    )
    p.add_argument(
        "--ce-tumour-weight",
        type=float,
        default=1.0,
        help="cross-entropy weight of tumour voxels relative to background voxels",
    )
    p.add_argument(
        "--checkpoint",
        choices=train_volumes.CHECKPOINT_CHOICES,
        default="best",
        help="step kept as WORK_DIR/best.pt: best validation score (the validation cases "
        "choose) or the final step of the fixed schedule (they only measure)",
    )
    p.add_argument(
        "--min-component-ml",
        type=float,
        default=0.0,
        help="card post-processing: tumour components smaller than this (mL) become "
        "background at run time (choose it on validation cases: python -m "
        "tumorlens_train.component_sweep)",
    )
    p.add_argument(
        "--min-enhancing-ml",
        type=float,
        default=0.0,
        help="card post-processing: a study whose enhancing tumour is smaller than this (mL) "
        "in total has it relabelled as tumour core at run time (chosen the same way)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for training")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="processes preparing the cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--export-only", action="store_true", help="export WORK_DIR/best.pt")
    p.add_argument(
        "--type-head-width",
        type=int,
        default=32,
        help="stage 2: conv type head of this width trained on the frozen encoder (0: none)",
    )
    p.add_argument("--type-head-epochs", type=int, default=80)
    p.add_argument(
        "--type-head-only", action="store_true", help="skip stage 1; stage 2 on WORK_DIR/best.pt"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    shape = tuple(int(v) for v in args.shape.split(","))
    grid = GridSpec(
        spacing=args.spacing, shape=(shape[0], shape[1], shape[2]), placement=args.placement
    )
    export_from = args.work_dir / "best.pt"
    if not args.export_only:
        cases: list[volumes.Prepared] = []
        sources = []
        for folder in args.data:
            paths = volumes.build_cache(
                folder,
                args.work_dir / "cache" / folder.name,
                grid,
                args.workers,
                template_dir=args.template_dir,
            )
            cases += volumes.load_cached(paths)
            sources.append({"folder": str(folder), "cases": len(paths)})
        val_cases = cases[-args.val_count :] if args.val_count else []
        train_cases = cases[: len(cases) - len(val_cases)]
        log.info("%d training cases, %d validation cases", len(train_cases), len(val_cases))
    if not args.export_only and not args.type_head_only:
        cfg = train_volumes.TrainConfig(
            work_dir=args.work_dir,
            grid=grid,
            net=Net3dConfig(base=args.base, levels=args.levels),
            augment=volumes.AugmentConfig(p_affine=args.p_affine),
            warm_start=args.warm_start,
            steps=args.steps,
            minutes=args.minutes,
            batch_size=args.batch_size,
            lr=args.lr,
            batch_dice=args.batch_dice,
            ce_tumour_weight=args.ce_tumour_weight,
            checkpoint=args.checkpoint,
            bf16=args.bf16,
            threads=args.threads,
            seed=args.seed,
            device=args.device,
            val_every=args.val_every,
            data={
                "sources": sources,
                "n_train": len(train_cases),
                "n_validation": len(val_cases),
                "validation_cases": [c.case_id for c in val_cases],
            },
        )
        result = train_volumes.train(cfg, train_cases, val_cases)
        log.info("training done: %s", result)
    typed = [] if args.export_only else [c for c in train_cases if c.type_index != volumes.UNKNOWN]
    if not args.export_only and args.type_head_width and not typed:
        # BraTS 2021/2023 cases carry no tumour type: nothing to train a type head on.
        log.warning("no training case has a known tumour type: type head stage skipped")
    elif not args.export_only and args.type_head_width:
        export_from = args.work_dir / "best_type.pt"
        best = train_volumes.train_type_head(
            args.work_dir / "best.pt",
            export_from,
            train_cases,
            val_cases,
            width=args.type_head_width,
            epochs=args.type_head_epochs,
            threads=args.threads,
            seed=args.seed,
        )
        log.info("type head: %s", best)
    elif args.export_only and (args.work_dir / "best_type.pt").exists():
        export_from = args.work_dir / "best_type.pt"
    card = export3d.export_checkpoint(
        checkpoint=export_from,
        out_dir=args.out,
        name=args.name,
        version=args.version,
        heldout=args.heldout,
        heldout_subsets=[tuple(v.split(",")) for v in args.heldout_subset],
        threads=args.threads,
        min_component_ml=args.min_component_ml,
        min_enhancing_ml=args.min_enhancing_ml,
        template_dir=args.template_dir,
    )
    log.info("wrote %s", card)
    return 0
