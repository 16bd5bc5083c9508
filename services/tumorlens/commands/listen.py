"""``tumorlens listen``: listener, assembler and status API, without a worker."""

from __future__ import annotations

import argparse

from tumorlens.commands.common import add_service_options, settings_from_args
from tumorlens.service import run_service


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "listen", help="run the DICOM listener, assembler and status API (no worker)"
    )
    add_service_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_service(settings_from_args(args), worker=False)
