"""Inference latency: PyTorch eager (CPU) vs ONNX Runtime (CPU) on the same batch and threads.

    python bench/inference.py [--models slice_type_2d,tumour3d] [--batch 32] [--threads 2]
        [--runs 20] [--volume-batch 1]

3D models run at ``--volume-batch`` (default 1: one study) on their card's grid.

On a shared, oversubscribed machine run it with ``OMP_WAIT_POLICY=PASSIVE``: otherwise torch's
spinning OpenMP threads, not the model, dominate the eager timings.

Each model is a :class:`Target` built by a function in ``TARGETS``; a 3D model is added by
writing another builder. A model whose ONNX file or torch definition/weights are missing is
skipped with the reason printed (the torch side is optional: ORT alone is still timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from host import describe, machine  # bench/host.py (bench/ is on sys.path when run as a script)

from tumorlens.inference.card import resolve_model
from tumorlens.inference.session import create_session

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "models" / "tumorlens_zoo"
CHECKPOINTS = REPO / "models" / "checkpoints"


@dataclass(frozen=True)
class Target:
    name: str
    onnx_path: Path
    input_name: str
    sample_shape: tuple[int, ...]  # one sample, without the batch axis
    torch_model: Any | None  # an eval-mode torch.nn.Module, or None
    torch_missing: str = ""  # why there is no torch model
    batch: int | None = None  # overrides --batch (3D models: one study per call)


def _slice_type_2d(args: argparse.Namespace) -> Target:
    onnx_path, card = resolve_model("slice_type_2d", ZOO)
    shape = (card.input_channels, card.input_size, card.input_size)
    arch = card.raw.get("architecture", {})
    ensemble = "members" in arch  # the card says whether the ONNX file is an ensemble
    # Default: the committed checkpoints the ONNX file was exported from (member 1 is
    # slice_type_2d.pt, member i > 1 slice_type_2d.member<i>.pt).
    checkpoints: list[Path] = args.slice_checkpoint or [
        CHECKPOINTS / ("slice_type_2d.pt" if i == 1 else f"slice_type_2d.member{i}.pt")
        for i in range(1, int(arch.get("members", 1)) + 1)
    ]
    try:
        from tumorlens_train.nets2d import SliceEnsemble, load_checkpoint
    except ModuleNotFoundError as exc:
        return Target(card.name, onnx_path, card.input_name, shape, None, f"no torch ({exc})")
    missing = [str(path) for path in checkpoints if not path.is_file()]
    if missing:
        return Target(
            card.name, onnx_path, card.input_name, shape, None, f"no checkpoint {missing}"
        )
    nets = [load_checkpoint(str(path))[0] for path in checkpoints]
    # Eager torch runs the same graph as the ONNX file.
    model = SliceEnsemble(nets, mirror=bool(arch["mirror_views"])) if ensemble else nets[0]
    return Target(card.name, onnx_path, card.input_name, shape, model)


def _tumour3d(args: argparse.Namespace) -> Target:
    from tumorlens.inference.preprocess3d import SEQUENCES, load_volume_card

    onnx_path, card = load_volume_card("tumour3d", ZOO)
    shape = (len(SEQUENCES), *card.grid.shape)
    batch = args.volume_batch
    checkpoint = args.volume_checkpoint
    try:
        from tumorlens_train.nets3d import load_checkpoint
    except ModuleNotFoundError as exc:
        return Target(
            card.name, onnx_path, card.input_name, shape, None, f"no torch ({exc})", batch
        )
    if not checkpoint.is_file():
        return Target(
            card.name, onnx_path, card.input_name, shape, None, f"no checkpoint {checkpoint}", batch
        )
    model, _ = load_checkpoint(str(checkpoint))
    return Target(card.name, onnx_path, card.input_name, shape, model, "", batch)


# name -> builder.
TARGETS: dict[str, Callable[[argparse.Namespace], Target]] = {
    "slice_type_2d": _slice_type_2d,
    "tumour3d": _tumour3d,
}


def _time(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _time_interleaved(
    first: Callable[[], object], second: Callable[[], object], runs: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Both callables timed in alternating blocks of ``runs`` (three rounds), so that a slow
    spell of this shared machine falls on both sides instead of on whichever ran second.
    Blocks, not single calls: each runtime's idle worker threads spin for a while after a
    call, and alternating call by call would time the other runtime against that spinning."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(3):
        a += _time(first, runs, warmup)
        b += _time(second, runs, warmup)
    return a, b


def op_profile(target: Target, batch: int, threads: int, runs: int) -> list[tuple[str, float]]:
    """ONNX Runtime's own profile of ``runs`` calls: (op type, ms per call), largest first."""
    import onnxruntime as ort

    from tumorlens.inference.session import session_options

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "tumorlens_ort_profile")
    session = ort.InferenceSession(
        str(target.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).standard_normal((batch, *target.sample_shape), dtype=np.float32)
    for _ in range(runs):
        session.run(None, {target.input_name: x})
    trace = Path(session.end_profiling())
    totals: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1000.0 / runs
    trace.unlink()
    return sorted(totals.items(), key=lambda item: -item[1])


def bench(target: Target, batch: int, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    batch = target.batch or batch
    x = np.random.default_rng(0).standard_normal((batch, *target.sample_shape))
    x = x.astype(np.float32)
    session = create_session(target.onnx_path, threads=threads, prefer_gpu=False)

    def run_ort() -> object:
        return session.run(None, {target.input_name: x})

    row: dict[str, Any] = {"model": target.name, "batch": batch, "threads": threads, "runs": runs}
    if target.torch_model is None:
        row["ort_ms"] = 1000 * statistics.median(_time(run_ort, runs, warmup))
        row["torch_skipped"] = target.torch_missing
        return row
    import torch

    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    model = target.torch_model.eval()

    def run_torch() -> object:
        with torch.inference_mode():
            return model(xt)

    ort_out = session.run(None, {target.input_name: x})[0]
    torch_out = run_torch()[0].numpy()  # type: ignore[index]
    ort_times, torch_times = _time_interleaved(run_ort, run_torch, runs, warmup)
    row["ort_ms"] = 1000 * statistics.median(ort_times)
    row["torch_ms"] = 1000 * statistics.median(torch_times)
    row["speedup_ort_vs_torch"] = row["torch_ms"] / row["ort_ms"]
    row["max_abs_diff"] = float(np.abs(ort_out - torch_out).max())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TARGETS), help="comma-separated names")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--slice-checkpoint",
        type=Path,
        action="append",
        help="torch checkpoint of slice_type_2d, one per ensemble member, in the card's order "
        "(default: models/checkpoints/slice_type_2d.pt and slice_type_2d.member<i>.pt)",
    )
    parser.add_argument(
        "--volume-checkpoint",
        type=Path,
        default=CHECKPOINTS / "tumour3d.pt",
        help="torch checkpoint of tumour3d (written by tumorlens-train seg3d)",
    )
    parser.add_argument("--volume-batch", type=int, default=1, help="batch for 3D models")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print ONNX Runtime's time per op type for each model (its own profiler)",
    )
    args = parser.parse_args(argv)

    host = machine()
    print(describe(host))
    rows = []
    for name in args.models.split(","):
        if name not in TARGETS:
            print(f"{name}: unknown model (known: {', '.join(TARGETS)})", file=sys.stderr)
            return 2
        try:
            target = TARGETS[name](args)
        except Exception as exc:  # a model not shipped yet is skipped, not fatal
            print(f"{name}: skipped ({exc})")
            continue
        rows.append(bench(target, args.batch, args.threads, args.runs, args.warmup))
        if args.profile:
            ops = op_profile(target, target.batch or args.batch, args.threads, args.runs)
            total = sum(ms for _, ms in ops)
            print(f"{name}: ORT kernel time per call {total:.1f} ms, by op type:")
            for op, ms in ops[:6]:
                print(f"  {op:<16} {ms:8.1f} ms  {100 * ms / total:4.0f}%")

    print(
        f"{'model':<16} {'batch':>5} {'thr':>3} {'torch ms':>9} {'ORT ms':>8} "
        f"{'ORT ms/img':>10} {'speedup':>8}"
    )
    for r in rows:
        torch_ms = f"{r['torch_ms']:9.1f}" if "torch_ms" in r else f"{'-':>9}"
        speedup = f"{r['speedup_ort_vs_torch']:7.2f}x" if "torch_ms" in r else f"{'-':>8}"
        print(
            f"{r['model']:<16} {r['batch']:5d} {r['threads']:3d} {torch_ms} "
            f"{r['ort_ms']:8.1f} {r['ort_ms'] / r['batch']:10.2f} {speedup}"
        )
        if "torch_skipped" in r:
            print(f"  torch skipped: {r['torch_skipped']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": host, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
