"""``tumorlens make-study``: write NIfTI volumes as a DICOM MR study (test data for a PACS)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorlens.dicomio.make_study import make_study
from tumorlens.dicomio.mr_headers import SEQUENCES
from tumorlens.errors import ConfigurationError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "make-study",
        help="write NIfTI volumes as a DICOM MR study",
        description="Write one MR series per sequence, one instance per slice, keeping "
        "each volume's geometry.",
    )
    for sequence in SEQUENCES:
        parser.add_argument(f"--{sequence}", type=Path, metavar="NIFTI", help=f"{sequence} volume")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--patient-name", default="TUMORLENS^TEST", help="PN, e.g. DOE^JANE")
    parser.add_argument("--patient-id", default="TL000001")
    parser.add_argument("--patient-birth-date", default="", metavar="YYYYMMDD")
    parser.add_argument("--patient-sex", default="O", choices=("M", "F", "O", ""))
    parser.add_argument("--study-description", help="default depends on contrast")
    parser.add_argument("--accession-number", help="default derived from the study UID")
    parser.add_argument("--study-uid", help="Study Instance UID (default: a new one)")
    parser.add_argument("--seed", type=int, help="make UIDs reproducible")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    volumes = {s: getattr(args, s) for s in SEQUENCES if getattr(args, s) is not None}
    if not volumes:
        raise ConfigurationError(f"give at least one of {', '.join('--' + s for s in SEQUENCES)}")
    study = make_study(
        volumes,
        args.out,
        patient_name=args.patient_name,
        patient_id=args.patient_id,
        patient_birth_date=args.patient_birth_date,
        patient_sex=args.patient_sex,
        study_description=args.study_description,
        accession_number=args.accession_number,
        study_instance_uid=args.study_uid,
        seed=args.seed,
    )
    print(f"StudyInstanceUID {study.study_instance_uid}")
    for series in study.series:
        print(
            f"series {series.series_number} {series.sequence}: {series.n_instances} instances "
            f"in {series.paths[0].parent if series.paths else args.out}"
        )
    print(f"{len(study.paths)} instances in {len(study.series)} series under {args.out}")
    return 0
