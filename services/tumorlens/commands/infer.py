"""``tumorlens infer DICOM_DIR --out DIR``: the worker's pipeline on a folder, offline.

No network, Redis or listener: reads the study under DICOM_DIR, writes the result objects
(SEG, SR, PDF, optional SC) as DICOM files, ``result.json`` with the findings and the time
each step took, and the label map and brain mask as NIfTI on the reference series' grid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tumorlens.analysis.analyse import analyse
from tumorlens.analysis.instances import StudyInstances
from tumorlens.analysis.models import ModelSet
from tumorlens.config import load_settings
from tumorlens.sender.outbox import atomic_write

RESULT_FILE = "result.json"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="analyse a study in a folder and write SEG, SR, PDF and result.json (offline)",
    )
    parser.add_argument("dicom_dir", type=Path, metavar="DICOM_DIR")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write result.json here")
    parser.add_argument("--study", metavar="UID", help="the study, when DICOM_DIR holds several")
    parser.add_argument("--version", type=int, default=1, help="study version for the UIDs")
    parser.add_argument("--models-dir", type=Path, help="models directory (default: settings)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: settings)")
    parser.add_argument("--segmentation-type", choices=("BINARY", "LABELMAP"), help="SEG encoding")
    parser.add_argument(
        "--burned-overlays",
        action="store_true",
        default=None,
        help="also write burned-in Secondary Capture overlays",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(
        args.config,
        models_dir=args.models_dir,
        inference_threads=args.threads,
        segmentation_type=args.segmentation_type,
        burned_overlays=args.burned_overlays,
    )
    started = time.perf_counter()
    instances = StudyInstances.from_folder(args.dicom_dir, args.study)
    load_started = time.perf_counter()
    models = ModelSet.load(settings)
    model_seconds = time.perf_counter() - load_started

    def announce(step: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {step}", file=sys.stderr, flush=True)

    analysis = analyse(instances, args.version, models, settings, on_step=announce)
    args.out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    files: list[dict[str, Any]] = []
    for kind, dataset in analysis.objects:
        counts[kind] = counts.get(kind, 0) + 1
        name = f"{kind}.dcm" if counts[kind] == 1 else f"{kind}_{counts[kind]}.dcm"
        dataset.save_as(args.out / name, enforce_file_format=True)
        files.append({"kind": kind, "file": name, "sop_instance_uid": str(dataset.SOPInstanceUID)})
    analysis.save_maps(args.out)  # labels.nii.gz, brain_mask.nii.gz, for research use
    result = dict(analysis.result)
    result["objects"] = files
    result["model_load_seconds"] = round(model_seconds, 3)
    result["total_seconds"] = round(time.perf_counter() - started, 3)
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(args.out / RESULT_FILE, text.encode())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, text.encode())
    volumes = result["volumes_ml"]
    kind_type = result["tumour_type"]["most_probable"]
    print(
        f"{analysis.study_instance_uid}: whole tumour {volumes['whole_tumour']:.1f} mL "
        f"(core {volumes['core']:.1f}, oedema {volumes['oedema']:.1f}, enhancing "
        f"{volumes['enhancing']:.1f}), {result['lesion_count']} lesion(s), type {kind_type}, "
        f"P(HGG) {result['grade']['hgg_probability']:.2f}; "
        f"{len(files)} object(s) in {args.out} ({result['total_seconds']:.1f} s)"
    )
    return 0
