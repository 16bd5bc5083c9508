"""Run ``tumorlens serve`` as a real subprocess on free loopback ports, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.helpers.dicom_peers import free_port
from tumorlens.store.embedded_redis import url_for
from tumorlens.store.jobs import Job, JobStore
from tumorlens.store.states import TERMINAL_STATES, JobState

AE_TITLE = "TUMORLENS"


class ServeProcess:
    """``tumorlens serve`` with its own data directory; ``jobs`` reads its job store."""

    def __init__(self, data_dir: Path, **settings: object) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.grpc_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            {
                "TUMORLENS_DATA_DIR": str(data_dir),
                "TUMORLENS_DICOM_HOST": "127.0.0.1",
                "TUMORLENS_DICOM_PORT": str(self.port),
                "TUMORLENS_GRPC_ADDRESS": f"127.0.0.1:{self.grpc_port}",
                "TUMORLENS_STABLE_AGE": "1",
                "TUMORLENS_ASSEMBLER_INTERVAL": "0.2",
                "TUMORLENS_DISK_RESERVE_MB": "16",
            }
        )
        self.env.pop("TUMORLENS_CONFIG", None)
        self.env.pop("TUMORLENS_REDIS_URL", None)
        for name, value in settings.items():
            self.env[f"TUMORLENS_{name.upper()}"] = str(value)
        self.process: subprocess.Popen[str] | None = None
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        self._jobs: JobStore | None = None

    def start(self, timeout: float = 60.0) -> ServeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = len(self.log())
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tumorlens", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log()}")
            text = self.log()[offset:]
            if "tumorlens ready" in text and "ready." in text:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"serve not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def jobs(self) -> JobStore:
        if self._jobs is None:
            self._jobs = JobStore.from_url(url_for(self.data_dir))
        return self._jobs

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        self._jobs = None
        return code

    def wait_for(
        self,
        study: str,
        predicate: Callable[[Job], bool] = lambda job: job.state in TERMINAL_STATES,
        timeout: float = 120.0,
        version: int | None = None,
    ) -> Job:
        deadline = time.monotonic() + timeout
        last: Job | None = None
        while time.monotonic() < deadline:
            try:
                last = self.jobs.get(study, version)
                if predicate(last):
                    return last
            except Exception:  # not there yet, or Redis restarting
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {study}; last: {last}\n{self.log()[-4000:]}")

    def spool_files(self, study: str) -> list[Path]:
        return sorted((self.data_dir / "spool" / study).rglob("*.dcm"))


def states(job: Job) -> list[JobState]:
    return [entry.state for entry in job.timeline]


def dedup(items: Iterable[JobState]) -> list[JobState]:
    out: list[JobState] = []
    for item in items:
        if not out or out[-1] != item:
            out.append(item)
    return out
