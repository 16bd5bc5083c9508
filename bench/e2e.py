"""End-to-end benchmark: Orthanc (the PACS) pushes a study to ``tumorlens serve``; the results
(SEG, SR, PDF) come back into Orthanc. Several runs per study, each with new UIDs.

For every run it reports, from the job timeline and Orthanc's REST API:

* ``latency``: last instance received (Orthanc's synchronous C-STORE push has returned) ->
  last result object stored in Orthanc, minus the stable-age wait (the quiet time the
  assembler waits for more instances, a setting: 1 s here);
* the time of each pipeline step (timeline entries);
* ``push``: how long Orthanc took to send the study (the reference measured in the same run:
  the ratio latency/push says how the analysis compares with merely moving the study);
* the worker's peak resident memory (VmHWM of the worker process, from /proc).

Studies: the real case TCGA-FG-6692 (4 x 26 slices, 5.5 mm) and a BraTS-sized synthetic head
(4 x 155 slices of 240 x 240).

    python bench/e2e.py [--runs 3] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from host import describe, machine  # bench/host.py (bench/ is on sys.path as a script)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.orthanc import Orthanc  # noqa: E402
from tests.helpers.service import AE_TITLE, ServeProcess  # noqa: E402
from tests.helpers.studies import tcga_study  # noqa: E402
from tests.helpers.volumes import synthetic_head  # noqa: E402
from tumorlens.dicomio.make_study import WrittenStudy, make_study  # noqa: E402
from tumorlens.store.jobs import Job  # noqa: E402
from tumorlens.store.states import JobState  # noqa: E402

STABLE_AGE = 1.0
RESULT_MODALITIES = ("SEG", "SR", "DOC")


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def wait_results(orthanc: Orthanc, study_id: str, expected: int, timeout: float) -> float:
    """Poll Orthanc until ``expected`` result series are stored; returns that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        series = orthanc.get(f"/studies/{study_id}/series")
        found = [s for s in series if s["MainDicomTags"].get("Modality") in RESULT_MODALITIES]
        if len(found) >= expected:
            return time.time()
        time.sleep(0.05)
    raise TimeoutError("results did not reach Orthanc")


def step_times(job: Job) -> dict[str, float]:
    """Seconds per RUNNING/SENDING step, from consecutive timeline entries."""
    out: dict[str, float] = {}
    entries = job.timeline
    for entry, following in itertools.pairwise(entries):
        if entry.state in (JobState.RUNNING, JobState.SENDING) and entry.step:
            out[entry.step] = out.get(entry.step, 0.0) + following.time - entry.time
    return out


def one_run(serve: ServeProcess, orthanc: Orthanc, study: WrittenStudy) -> dict[str, Any]:
    (study_id,) = orthanc.upload(study.paths)
    started = time.time()
    orthanc.push_study("tumorlens", study_id)
    pushed = time.time()
    job = serve.wait_for(study.study_instance_uid, timeout=600)
    if job.state is not JobState.DONE:
        raise RuntimeError(f"job ended {job.state}: {job.error}")
    expected = len(job.details["objects"])
    stored = wait_results(orthanc, study_id, expected, 120)
    queued = next(e.time for e in job.timeline if e.state is JobState.QUEUED)
    stable_wait = max(0.0, queued - pushed)
    pid = int(job.worker.rsplit(":", 1)[1])
    orthanc.request("DELETE", f"/studies/{study_id}")  # keep Orthanc small between runs
    return {
        "push_s": pushed - started,
        "latency_s": stored - pushed - stable_wait,
        "stable_wait_s": stable_wait,
        "steps": step_times(job),
        "worker_peak_mb": peak_rss_mb(pid),
        "objects": expected,
    }


def report(name: str, runs: list[dict[str, Any]]) -> None:
    print(f"\n== {name}: {len(runs)} runs")
    steps = list(runs[0]["steps"])
    for i, run in enumerate(runs, start=1):
        parts = ", ".join(f"{s} {run['steps'].get(s, 0):.2f}" for s in steps)
        print(
            f"run {i}: latency {run['latency_s']:.2f} s (push {run['push_s']:.2f} s, stable wait"
            f" {run['stable_wait_s']:.2f} s), worker peak {run['worker_peak_mb']:.0f} MB; {parts}"
        )
    med = statistics.median
    latency = med(r["latency_s"] for r in runs)
    push = med(r["push_s"] for r in runs)
    print(f"median latency {latency:.2f} s (target <= 20 s)")
    print(f"median Orthanc push {push:.2f} s; ratio latency/push {latency / push:.1f}x")
    print(f"worker peak memory {max(r['worker_peak_mb'] for r in runs):.0f} MB (target <= 3072)")
    print("median per step (s): " + ", ".join(
        f"{s} {med(r['steps'].get(s, 0.0) for r in runs):.2f}" for s in steps))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("TUMORLENS_DATA", REPO.parent / "shared" / "data")),
    )
    parser.add_argument("--only", choices=("tcga", "4x155"), help="one study only")
    args = parser.parse_args()
    print(describe(machine()))
    case = args.data / "cases" / "TCGA-FG-6692"
    with tempfile.TemporaryDirectory(prefix="tl-e2e-") as tmp:
        work = Path(tmp)
        serve = ServeProcess(work / "data", stable_age=STABLE_AGE)
        orthanc = Orthanc(work / "orthanc", {"tumorlens": (AE_TITLE, "127.0.0.1", serve.port)})
        serve.env["TUMORLENS_PEERS"] = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        serve.env["TUMORLENS_ALLOWED_CALLING_AETS"] = "ORTHANC"
        orthanc.start()
        serve.start()
        try:
            studies: dict[str, Any] = {}
            if args.only in (None, "tcga"):
                studies["TCGA-FG-6692 (4 x 26)"] = lambda i: tcga_study(
                    case, work / f"tcga{i}", seed=900 + i
                )
            if args.only in (None, "4x155"):
                head = synthetic_head(work / "head")
                studies["synthetic head (4 x 155)"] = lambda i: make_study(
                    head, work / f"head{i}", patient_id="BENCH4X155", seed=1550 + i
                )
            # One untimed warm-up study: the worker loads its models at the first one.
            one_run(serve, orthanc, next(iter(studies.values()))(99))
            for name, build in studies.items():
                report(name, [one_run(serve, orthanc, build(i)) for i in range(args.runs)])
        finally:
            serve.stop()
            orthanc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
