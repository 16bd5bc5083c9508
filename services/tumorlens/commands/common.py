"""Options shared by the long-running commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorlens.config import Settings, load_settings


def add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="spool, outbox and embedded Redis")
    parser.add_argument("--port", type=int, dest="dicom_port", help="DICOM port")
    parser.add_argument("--ae-title", help="our AE title")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        data_dir=getattr(args, "data_dir", None),
        dicom_port=getattr(args, "dicom_port", None),
        ae_title=getattr(args, "ae_title", None),
    )
