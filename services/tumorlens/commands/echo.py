"""``tumorlens echo``: C-ECHO a DICOM peer (Verification, PS3.4 Annex A)."""

from __future__ import annotations

import argparse

from pynetdicom.status import STATUS_SUCCESS, code_to_category

from tumorlens.sender.scu import (
    DEFAULT_CALLED_AET,
    DEFAULT_CALLING_AET,
    DEFAULT_HOST,
    DEFAULT_PORT,
    echo,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("echo", help="C-ECHO a DICOM peer")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--called-aet", default=DEFAULT_CALLED_AET)
    parser.add_argument("--calling-aet", default=DEFAULT_CALLING_AET)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    status = echo(args.host, args.port, args.called_aet, args.calling_aet, timeout=args.timeout)
    category = code_to_category(status)
    print(f"C-ECHO {args.called_aet}@{args.host}:{args.port}: {category} (0x{status:04X})")
    return 0 if category == STATUS_SUCCESS else 1
