"""``tumorlens push``: C-STORE DICOM files to a peer over one association."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tumorlens.sender.scu import (
    DEFAULT_CALLED_AET,
    DEFAULT_CALLING_AET,
    DEFAULT_HOST,
    DEFAULT_MAX_PDU,
    DEFAULT_PORT,
    push,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "push",
        help="send DICOM files to a Storage SCP",
        description="C-STORE every DICOM file found (folders walked recursively) over one "
        "association; other files are skipped.",
    )
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--called-aet", default=DEFAULT_CALLED_AET)
    parser.add_argument("--calling-aet", default=DEFAULT_CALLING_AET)
    parser.add_argument("--max-pdu", type=int, default=DEFAULT_MAX_PDU, help="bytes")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bar (default: when stderr is a terminal)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = push(
        args.paths,
        args.host,
        args.port,
        args.called_aet,
        args.calling_aet,
        progress=args.progress,
        max_pdu=args.max_pdu,
    )
    for outcome in (*result.warnings, *result.failed):
        status = "not sent" if outcome.status is None else f"status 0x{outcome.status:04X}"
        print(f"{outcome.path}: {status}: {outcome.reason}", file=sys.stderr)
    print(
        f"sent {result.sent}, failed {len(result.failed)}, warnings {len(result.warnings)}, "
        f"skipped {result.skipped} non-DICOM in {result.elapsed:.1f} s"
    )
    return 0 if result.ok else 1
