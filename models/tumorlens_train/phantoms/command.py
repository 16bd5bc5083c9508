"""``tumorlens-train phantoms``: generate a synthetic dataset in BraTS layout.

Hook into the ``tumorlens-train`` dispatcher with ``register(subparsers)``; for a standalone
run use ``python -m tumorlens_train.phantoms`` (same options).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .contrast import MAX_T1CE_UPTAKE
from .generate import PhantomConfig, case_seed, case_type, generate_case
from .labels import TumourType, parse_types
from .template import DEFAULT_SPACING_MM, load_template
from .writer import write_case, write_index

log = logging.getLogger(__name__)


def _types_arg(text: str) -> tuple[TumourType, ...]:
    try:
        types = parse_types(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not types:
        raise argparse.ArgumentTypeError("no tumour type given")
    return types


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return value


def _range_within(lowest: float, highest: float) -> Callable[[str], tuple[float, float]]:
    """An argparse type for ``LOW,HIGH`` with ``lowest <= LOW <= HIGH <= highest``."""

    def parse(text: str) -> tuple[float, float]:
        try:
            low, high = (float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
        if not lowest <= low <= high <= highest:
            raise argparse.ArgumentTypeError(
                f"need {lowest:g} <= LOW <= HIGH <= {highest:g}, got {text!r}"
            )
        return low, high

    return parse


_conspicuity_range = _range_within(0.0, 1.0)
_uptake_range = _range_within(1.0, MAX_T1CE_UPTAKE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the subcommand and ``python -m tumorlens_train.phantoms``."""
    parser.add_argument("--n", type=_positive_int, required=True, help="number of cases")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--types",
        type=_types_arg,
        default=tuple(TumourType),
        help="comma-separated tumour types, assigned round-robin (default all: "
        + ",".join(t.value for t in TumourType)
        + ")",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        default=DEFAULT_SPACING_MM,
        help=f"isotropic working grid spacing in mm (default {DEFAULT_SPACING_MM})",
    )
    head = parser.add_mutually_exclusive_group()
    head.add_argument(
        "--full-head",
        dest="full_head",
        action="store_true",
        default=True,
        help="skull, scalp and background around the brain, like clinical studies (default)",
    )
    head.add_argument(
        "--brain-only",
        dest="full_head",
        action="store_false",
        help="skull-stripped like BraTS: zero outside brain and tumour",
    )
    parser.add_argument(
        "--thick-slice-prob",
        type=_probability,
        default=PhantomConfig.thick_slice_prob,
        help="chance per sequence of a simulated 2D thick-slice acquisition (default %(default)s)",
    )
    parser.add_argument(
        "--lesion-conspicuity",
        type=_conspicuity_range,
        default=PhantomConfig.lesion_conspicuity,
        metavar="LOW,HIGH",
        help="per-case conspicuity of non-enhancing tumour and oedema, drawn from U(LOW, HIGH) "
        "in [0, 1]; lower is subtler (default 1,1: the base contrast, nothing drawn)",
    )
    parser.add_argument(
        "--dural-sinuses",
        action="store_true",
        help="draw the superior sagittal and transverse sinuses (enhancing blood, label 0) "
        "in full-head phantoms; off by default, which keeps existing datasets unchanged",
    )
    parser.add_argument(
        "--t1ce-uptake",
        type=_uptake_range,
        default=PhantomConfig.t1ce_uptake,
        metavar="LOW,HIGH",
        help="per-case T1c gain of non-enhancing tumour and oedema, drawn from U(LOW, HIGH) "
        f"in [1, {MAX_T1CE_UPTAKE:g}]: mild uptake that is not enhancement (default 1,1: none, "
        "nothing drawn)",
    )
    parser.add_argument(
        "--start", type=int, default=0, help="index of the first case, to extend a dataset"
    )
    parser.add_argument("--workers", type=_positive_int, default=1, help="worker processes")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``phantoms`` subcommand to a ``tumorlens-train`` subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "phantoms",
        help="generate synthetic brain-tumour MRI phantoms (BraTS layout)",
        description=__doc__,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


@dataclass(frozen=True)
class _Job:
    index: int
    seed: int
    tumour_type: TumourType
    out: Path
    config: PhantomConfig

    @property
    def case_id(self) -> str:
        return f"phantom_{self.index:05d}"


def _make_case(job: _Job) -> dict[str, Any]:
    phantom = generate_case(job.seed, job.tumour_type, job.config)
    return write_case(phantom, job.out, job.case_id)


def _warm(spacing: float) -> None:
    load_template(spacing)  # once per worker, before its first case


def run(args: argparse.Namespace) -> int:
    """Generate ``args.n`` cases; returns a process exit status."""
    config = PhantomConfig(
        spacing=args.spacing,
        full_head=args.full_head,
        thick_slice_prob=args.thick_slice_prob,
        lesion_conspicuity=args.lesion_conspicuity,
        dural_sinuses=args.dural_sinuses,
        t1ce_uptake=args.t1ce_uptake,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [
        _Job(i, case_seed(args.seed, i), case_type(args.types, i), args.out, config)
        for i in range(args.start, args.start + args.n)
    ]
    started = time.perf_counter()
    metas: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc="phantoms", unit="case") as bar:
        if args.workers == 1:
            _warm(config.spacing)
            for job in jobs:
                metas.append(_make_case(job))
                bar.update()
        else:
            # One BLAS thread per worker: the workers already fill the cores, and nested
            # threading made cases ~1.5x slower. Spawned children read this at numpy import.
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, "1")
            # spawn, not fork: the caller may have imported torch, whose threads do not fork well.
            with ProcessPoolExecutor(
                args.workers,
                mp_context=get_context("spawn"),
                initializer=_warm,
                initargs=(config.spacing,),
            ) as pool:
                for future in as_completed([pool.submit(_make_case, job) for job in jobs]):
                    metas.append(future.result())
                    bar.update()
    index = write_index(args.out, metas)
    log.info(
        "wrote %d cases to %s in %.1f s (index %s)",
        len(metas),
        args.out,
        time.perf_counter() - started,
        index,
    )
    return 0
