"""DICOM peers for tests: a dcmtk ``storescp`` on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

STORESCP = shutil.which("storescp")


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
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
    # TCP_NODELAY=1 makes dcmtk disable Nagle, else small PDUs wait ~40 ms each.
    env = {**os.environ, "TCP_NODELAY": "1"}
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [STORESCP, "-aet", ae_title, "-od", str(out_dir), *extra_args, str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
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
