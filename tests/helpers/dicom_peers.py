"""DICOM peers for tests: a dcmtk ``storescp`` on a free loopback port, dcmtk ``storescu``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path


def dcmtk(tool: str) -> str | None:
    """dcmtk's ``tool`` on PATH, skipping this venv's bin: pynetdicom installs console scripts
    of the same names (storescu, storescp, echoscu, ...) that take other options."""
    venv_bin = Path(sys.executable).parent.resolve()
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and Path(d).resolve() != venv_bin
    )
    return shutil.which(tool, path=path)


STORESCP = dcmtk("storescp")
STORESCU = dcmtk("storescu")
# TCP_NODELAY=1 makes dcmtk disable Nagle, else small PDUs wait ~40 ms each.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    folder: Path,
    *,
    called: str,
    calling: str = "STORESCU",
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """dcmtk ``storescu`` sending every file under ``folder`` (recursively, ``+sd +r``) to
    127.0.0.1:``port``; the caller checks the return code."""
    if STORESCU is None:
        raise FileNotFoundError("storescu (dcmtk) is not installed")
    return subprocess.run(
        [STORESCU, "-aet", calling, "-aec", called, "+sd", "+r", "127.0.0.1", str(port),
         str(folder)],
        env=DCMTK_ENV,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening_ports() -> set[int] | None:
    """Local TCP ports in LISTEN state, from /proc (Linux); None where that is unreadable."""
    ports: set[int] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            lines = Path(table).read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    except OSError:
        return None
    return ports


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Return once something listens on ``port``.

    Reads the socket table rather than connecting: a probe connection would be taken by a
    single-process SCP such as storescp for an association, and under load that races with
    the test's own association (storescp then drops the test's connection).
    """
    deadline = time.monotonic() + timeout
    while True:
        listening = _listening_ports()
        if listening is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                pass
        elif port in listening:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.05)


@dataclass(frozen=True)
class StoreSCP:
    """A running ``storescp``: where it listens and where it writes what it receives."""

    ae_title: str
    host: str
    port: int
    out_dir: Path
    log: Path

    def received(self) -> list[Path]:
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())


@contextmanager
def run_storescp(
    out_dir: Path, ae_title: str = "STORESCP", extra_args: Sequence[str] = ()
) -> Iterator[StoreSCP]:
    """Start dcmtk ``storescp`` on a free 127.0.0.1 port; stop it on exit."""
    if STORESCP is None:
        raise FileNotFoundError("storescp (dcmtk) is not installed")
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = out_dir.parent / f"storescp-{port}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [STORESCP, "-aet", ae_title, "-od", str(out_dir), *extra_args, str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
        )
    try:
        wait_for_port(port)
        yield StoreSCP(ae_title, "127.0.0.1", port, out_dir, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
