"""``tumorlens-train recard``: a new release of a 3D model that changes only its post-processing.

    tumorlens-train recard --card models/tumorlens_zoo/tumour3d.json --version 0.7.2 \\
        --refinement-strength 8 --out out/zoo3d_v72 \\
        --heldout out/phantoms/heldout3d_s --heldout-subset t1ce,flair \\
        --also base_contrast=out/phantoms/heldout3d

The ONNX file is copied unchanged (its sha256 checked against the source card), the card keeps
everything but its version, ``postprocessing`` (each step from the options, else the source
card's value) and ``metrics``, which are measured again with the new post-processing on
``--heldout`` (all sequences and each ``--heldout-subset``) and on each ``--also NAME=DIR``
(stored as ``metrics.held_out_phantoms_NAME``). ``derived_from`` names the source card.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from tumorlens.inference.card import sha256_file
from tumorlens.inference.preprocess3d import SEQUENCES
from tumorlens.inference.refine import BoundaryRefinement
from tumorlens.inference.volume_model import MIN_COMPONENT_ML, MIN_ENHANCING_ML, SEG_LOGIT_OFFSETS
from tumorlens_train.export3d import heldout_entry, measure_heldout, postprocessing_entry
from tumorlens_train.volumes import TEMPLATE_DIR

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "recard",
        help="release a 3D model again with new post-processing (same ONNX, metrics remeasured)",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--card", type=Path, required=True, help="the source model card (.json)")
    p.add_argument("--out", type=Path, required=True, help="folder for the new ONNX + card")
    p.add_argument("--version", required=True)
    p.add_argument("--seg-logit-offsets", help="background,core,oedema,enhancing (0,0,0,0: off)")
    p.add_argument("--min-component-ml", type=float)
    p.add_argument("--min-enhancing-ml", type=float)
    p.add_argument("--refinement-strength", type=float, help="boundary refinement (0: off)")
    p.add_argument("--refinement-smoothing-mm", type=float, default=0.0)
    p.add_argument("--refinement-max-shift-mm", type=float, default=float("inf"))
    p.add_argument("--heldout", type=Path, required=True, help="held-out cases, BraTS layout")
    p.add_argument("--heldout-subset", action="append", default=[], help="e.g. t1ce,flair")
    p.add_argument(
        "--also", action="append", default=[], metavar="NAME=DIR", help="another held-out set"
    )
    p.add_argument("--template-dir", type=Path, default=TEMPLATE_DIR)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)


def _postprocessing(args: argparse.Namespace, source: dict[str, Any]) -> dict[str, Any]:
    old = source.get("postprocessing") or {}
    offsets = (
        [float(v) for v in args.seg_logit_offsets.split(",")]
        if args.seg_logit_offsets is not None
        else old.get(SEG_LOGIT_OFFSETS)
    )
    if offsets is not None and len(offsets) != 4:
        raise SystemExit(f"--seg-logit-offsets needs 4 numbers, got {args.seg_logit_offsets!r}")
    refinement = (
        (
            BoundaryRefinement(
                args.refinement_strength,
                smoothing_mm=args.refinement_smoothing_mm,
                max_shift_mm=args.refinement_max_shift_mm,
            )
            if args.refinement_strength > 0
            else None
        )
        if args.refinement_strength is not None
        else BoundaryRefinement.from_card(source, args.card)
    )
    return postprocessing_entry(
        args.min_component_ml
        if args.min_component_ml is not None
        else float(old.get(MIN_COMPONENT_ML, 0.0)),
        args.min_enhancing_ml
        if args.min_enhancing_ml is not None
        else float(old.get(MIN_ENHANCING_ML, 0.0)),
        seg_logit_offsets=offsets,
        refinement=refinement,
    )


def run(args: argparse.Namespace) -> int:
    source = json.loads(args.card.read_text())
    onnx_src = args.card.parent / source["file"]
    digest = sha256_file(onnx_src)
    if digest != source["sha256"]:
        raise SystemExit(f"{onnx_src}: sha256 {digest} does not match {args.card}")
    also = []
    for item in args.also:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--also needs NAME=DIR, got {item!r}")
        also.append((name, Path(folder)))
    if args.out.resolve() == args.card.parent.resolve():
        raise SystemExit("--out must differ from the source card's folder")
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_src, args.out / source["file"])
    card = dict(source)
    card["version"] = args.version
    card.pop("postprocessing", None)
    post = _postprocessing(args, source)
    if post:
        card["postprocessing"] = post
    card["derived_from"] = {
        "name": source.get("name"),
        "version": source.get("version"),
        "card_sha256": sha256_file(args.card),
        "changes": "post-processing only: the same ONNX file (sha256 unchanged); metrics "
        "measured again (tumorlens-train recard)",
    }
    card_path = args.out / args.card.name
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    subsets = [s.split(",") for s in args.heldout_subset]
    measure_heldout(
        card, card_path, args.heldout, subsets, template_dir=args.template_dir, threads=args.threads
    )
    if also:
        from tumorlens.evaluation.volumes import evaluate_volumes

        for name, folder in also:
            report, _ = evaluate_volumes(folder, card_path, args.template_dir, threads=args.threads)
            entry = heldout_entry(report, folder, SEQUENCES, args.threads)
            card["metrics"][f"held_out_phantoms_{name}"] = entry
        card_path.write_text(json.dumps(card, indent=1) + "\n")
    log.info("wrote %s (postprocessing %s)", card_path, sorted(post))
    print(card_path)
    return 0
