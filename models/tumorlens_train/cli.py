"""The ``tumorlens-train`` command. Each subcommand lives in ``tumorlens_train.commands_<name>``
and registers itself with ``register(subparsers)``; this module only wires them together.

To add a subcommand, create ``commands_<name>.py`` with ``register(subparsers) -> None`` that
adds a parser and sets ``func=handler(args) -> int``; names already listed below are picked up
as soon as their module exists.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

# Before torch loads OpenMP: on shared, oversubscribed cores spinning worker threads burn most
# of the CPU waiting at barriers (measured 4-5x slower training steps); sleeping ones do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Imported lazily by name: a missing module (not written yet) is skipped, not an error.
COMMAND_MODULES: tuple[str, ...] = ("slices", "slices_ensemble", "phantoms", "seg3d", "recard")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tumorlens-train", description="Train and export tumorlens models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        module_name = f"tumorlens_train.commands_{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.func
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
