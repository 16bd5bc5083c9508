"""Ingest benchmark: dcmtk ``storescu`` pushes one 620-instance MR study (4 series x 155
slices, 240 x 240, 16 bit) to dcmtk ``storescp`` and to tumorlens, alternately, several runs.

Prints instances/s for both, the medians and the ratio tumorlens/storescp. Both receivers
get a fresh output directory per run; tumorlens fsyncs every instance before answering
Success (storescp does not), which this figure includes on purpose.

    python bench/ingest.py [--runs 5] [--study DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from host import describe, machine  # bench/host.py (bench/ is on sys.path as a script)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.dicom_peers import run_storescp, storescu  # noqa: E402
from tests.helpers.service import ServeProcess  # noqa: E402
from tests.helpers.volumes import synthetic_head  # noqa: E402
from tumorlens.dicomio.make_study import make_study  # noqa: E402
from tumorlens.identifiers import InstanceKey  # noqa: E402
from tumorlens.listener.spool import Spool  # noqa: E402


def build_study(work: Path) -> Path:
    volumes = synthetic_head(work / "nifti")
    study = make_study(volumes, work / "dicom", patient_id="BENCH620", seed=620)
    count = sum(len(s.paths) for s in study.series)
    print(f"study: {count} instances in {len(study.series)} series at {study.out_dir}")
    return study.out_dir


def push(port: int, called: str, folder: Path) -> float:
    started = time.perf_counter()
    result = storescu(port, folder, called=called, calling="BENCH")
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr[-2000:]}")
    return elapsed


def time_storescp(folder: Path, work: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=work))
    try:
        with run_storescp(out / "received") as scp:
            return push(scp.port, scp.ae_title, folder)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_tumorlens(folder: Path, work: Path) -> float:
    data = Path(tempfile.mkdtemp(dir=work)) / "data"
    # A long stable age keeps the worker out of the measurement: this is ingest only.
    serve = ServeProcess(data, stable_age=3600, disk_reserve_mb=64).start()
    try:
        return push(serve.port, "TUMORLENS", folder)
    finally:
        serve.stop()
        shutil.rmtree(data.parent, ignore_errors=True)


def durable_write_floor(folder: Path, work: Path) -> float:
    """Seconds per instance that the spool's durable write alone costs on this disk.

    The same files, written the way the listener writes them (temp file, fsync, link,
    directory fsync): no receiver that acknowledges only durable instances can be faster.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    payloads = [p.read_bytes() for p in files]
    spool = Spool(Path(tempfile.mkdtemp(dir=work)) / "spool")
    started = time.perf_counter()
    for index, payload in enumerate(payloads):
        spool.store(InstanceKey("1.2.3", "1.2.3.4", f"1.2.3.4.{index + 1}"), payload)
    elapsed = time.perf_counter() - started
    shutil.rmtree(spool.root.parent, ignore_errors=True)
    return elapsed / len(payloads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--study", type=Path, help="a folder of DICOM files to push instead")
    args = parser.parse_args()
    print(describe(machine()))
    work = Path(tempfile.mkdtemp(prefix="tumorlens-bench-"))
    try:
        folder = args.study or build_study(work)
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        dcmtk: list[float] = []
        ours: list[float] = []
        floor: list[float] = []
        for run in range(1, args.runs + 1):
            dcmtk.append(count / time_storescp(folder, work))
            ours.append(count / run_tumorlens(folder, work))
            floor.append(durable_write_floor(folder, work))
            print(
                f"run {run}: storescp {dcmtk[-1]:7.1f} inst/s   tumorlens {ours[-1]:7.1f} inst/s"
                f"   durable write {floor[-1] * 1000:5.2f} ms/inst"
            )
        ref, mine = statistics.median(dcmtk), statistics.median(ours)
        fsync_ms = statistics.median(floor) * 1000
        print(f"median over {args.runs} runs ({count} instances each):")
        print(f"  dcmtk storescp : {ref:7.1f} instances/s  ({count / ref:.2f} s per study)")
        print(f"  tumorlens      : {mine:7.1f} instances/s  ({count / mine:.2f} s per study)")
        print(f"  ratio tumorlens/storescp = {mine / ref:.2f}")
        print(
            f"  durable write alone (fsync file + directory, no network): {fsync_ms:.2f} ms "
            f"per instance = at most {1000 / fsync_ms:.0f} instances/s for any receiver that "
            f"acknowledges only what is on disk; storescp does not fsync"
        )
        print(
            f"  tumorlens time per instance {1000 / mine:.2f} ms = {fsync_ms:.2f} ms durable "
            f"write + {1000 / mine - fsync_ms:.2f} ms protocol, checks and job store"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
