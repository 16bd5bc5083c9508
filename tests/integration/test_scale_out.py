"""Scale-out: one shared Redis, two listeners and two workers as separate processes.

The same study pushed to both listeners at once must still run exactly once, and every
study must be analysed by one of the workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.dicom_peers import StoreSCP, free_port, storescu
from tests.helpers.studies import tcga_study
from tumorlens.store.embedded_redis import redis_server_binary
from tumorlens.store.jobs import JobStore
from tumorlens.store.states import JobState

pytestmark = pytest.mark.integration


@pytest.fixture
def shared_redis(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    process = subprocess.Popen(
        [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(folder), "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            JobStore.from_url(url).ping()
            break
        except Exception:
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait()


def start(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tumorlens", command],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for_logs(logs: list[Path], text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(log.exists() and text in log.read_text() for log in logs):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {logs} after {timeout} s")


def test_two_listeners_two_workers_one_redis(
    shared_redis: str, tmp_path: Path, shared_data: Path, results_scp: StoreSCP
) -> None:
    data = tmp_path / "shared-data"  # the listeners' and workers' common data_dir
    base = {
        **os.environ,
        "TUMORLENS_REDIS_URL": shared_redis,
        "TUMORLENS_DATA_DIR": str(data),
        "TUMORLENS_DICOM_HOST": "127.0.0.1",
        "TUMORLENS_STABLE_AGE": "2",
        "TUMORLENS_ASSEMBLER_INTERVAL": "0.2",
        "TUMORLENS_DISK_RESERVE_MB": "16",
        "TUMORLENS_DESTINATIONS": f"{results_scp.ae_title}@127.0.0.1:{results_scp.port}",
    }
    ports = [free_port(), free_port()]
    processes = []
    try:
        for i, port in enumerate(ports):
            env = {
                **base,
                "TUMORLENS_DICOM_PORT": str(port),
                "TUMORLENS_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
            }
            processes.append(start("listen", env, tmp_path / f"listen{i}.log"))
        for i in range(2):
            processes.append(start("worker", base, tmp_path / f"worker{i}.log"))
        wait_for_logs([tmp_path / "listen0.log", tmp_path / "listen1.log"], "tumorlens ready")
        wait_for_logs([tmp_path / "worker0.log", tmp_path / "worker1.log"], "ready.")
        # Real studies (TCGA-FG-6692 as DICOM, new UIDs per seed): the whole analysis runs.
        case = shared_data / "cases" / "TCGA-FG-6692"
        shared = tcga_study(case, tmp_path / "shared-study", seed=1)
        others = [tcga_study(case, tmp_path / f"study{i}", seed=10 + i) for i in range(2)]

        def push(port: int, folder: Path) -> None:
            result = storescu(port, folder, called="TUMORLENS")
            assert result.returncode == 0, result.stderr

        pushes = [(ports[0], tmp_path / "shared-study"), (ports[1], tmp_path / "shared-study")]
        pushes += [(ports[i % 2], tmp_path / f"study{i}") for i in range(2)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda args: push(*args), pushes))
        jobs = JobStore.from_url(shared_redis)
        deadline = time.monotonic() + 300
        uids = [shared.study_instance_uid] + [s.study_instance_uid for s in others]
        while time.monotonic() < deadline:
            states = [jobs.get(uid).state for uid in uids if jobs.known_instance_count(uid)]
            if len(states) == 3 and all(s is JobState.DONE for s in states):
                break
            time.sleep(0.3)
        for uid in uids:
            job = jobs.get(uid)
            assert job.state is JobState.DONE, (uid, job.error, job.state)
            assert (job.version, job.instances, job.attempts) == (1, 104, 1)
        assert len(jobs.list_jobs()) == 3  # the shared study ran once, not once per listener
        # each analysed by a worker process, which records its host:pid
        assert all(jobs.get(uid).worker.count(":") == 1 for uid in uids)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
