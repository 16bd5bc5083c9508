"""``python -m tumorlens_train.phantoms``: the ``phantoms`` subcommand without the dispatcher."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .command import add_arguments, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tumorlens_train.phantoms",
        description="Generate synthetic brain-tumour MRI phantoms in BraTS layout.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
