"""A real Orthanc (Debian's package) on free loopback ports, driven through its REST API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers.dicom_peers import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def available() -> bool:
    return Path(ORTHANC).exists()


class Orthanc:
    """Orthanc as a hospital PACS: it stores studies and pushes them to DICOM modalities."""

    def __init__(
        self,
        workdir: Path,
        modalities: dict[str, tuple[str, str, int]],
        aet: str = "ORTHANC",
        lua_scripts: tuple[Path, ...] = (),
        stable_age: int = 2,
    ) -> None:
        self.lua_scripts = lua_scripts
        self.stable_age = stable_age
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.modalities = modalities
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "tumorlens-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            # Orthanc 1.10 has no bind address; refusing remote access keeps it local.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [],
            "SaveJobs": False,
            "StableAge": self.stable_age,
            "LuaScripts": [str(p) for p in self.lua_scripts],
            "DicomScuTimeout": 30,
            "HttpTimeout": 120,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        log = self.log_path.open("ab")
        # Debian's Orthanc leaves Nagle's algorithm on unless told; pushes then crawl.
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(request, timeout=600) as response:
            data = response.read()
        return json.loads(data) if data else None

    def request_bytes(self, method: str, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=600) as response:
            data: bytes = response.read()
        return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post_json(self, path: str, payload: Any) -> Any:
        return self.request("POST", path, json.dumps(payload).encode())

    def upload(self, files: list[Path]) -> set[str]:
        """Store files in Orthanc; returns the Orthanc study IDs."""
        studies = set()
        for path in files:
            answer = self.request("POST", "/instances", path.read_bytes())
            studies.add(answer["ParentStudy"])
        return studies

    def push_study(self, modality: str, study_id: str) -> Any:
        """What a PACS routing rule does: C-STORE a whole study to a modality."""
        return self.post_json(
            f"/modalities/{modality}/store", {"Resources": [study_id], "Synchronous": True}
        )

    def echo(self, modality: str) -> None:
        self.post_json(f"/modalities/{modality}/echo", {})
