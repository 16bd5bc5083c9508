"""The one ``tumorlens`` command. Each subcommand lives in ``tumorlens.commands.<name>`` and
registers itself with ``register(subparsers)``; this module only wires them together."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tumorlens.errors import TumorlensError

# Imported lazily by name so that e.g. ``tumorlens evaluate`` never imports Celery.
COMMAND_MODULES: tuple[str, ...] = (
    "serve",
    "listen",
    "worker",
    "push",
    "echo",
    "make_study",
    "evaluate",
    "infer",
    "status",
    "retry",
    "cancel",
    "resend",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tumorlens",
        description="Brain-tumour MRI analysis service for a PACS (research use only).",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tumorlens.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("tumorlens.commands"):
                continue  # command not built yet in this checkout
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # pynetdicom logs every DIMSE message at INFO: thousands of lines per study.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    handler: Handler = args.func
    try:
        return handler(args)
    except TumorlensError as exc:
        print(f"tumorlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
