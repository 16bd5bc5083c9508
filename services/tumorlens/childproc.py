"""Child processes that do not outlive the service that started them."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Loaded now, not in the forked child: dlopen after fork in a threaded parent can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when our parent dies, so a killed ``serve`` leaves no orphans.

    SIGTERM, not SIGKILL: a Celery worker then requeues its task. Called at the start of a
    supervised child (the embedded Redis gets the same from util-linux's ``setpriv``).
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_supervisor(supervisor_pid: int, poll: float = 0.5) -> None:
    """In a supervised child: exit, with our own children, as soon as the supervisor is gone.

    The supervisor's death also takes the embedded Redis, so nothing we hold can finish:
    a Celery warm shutdown would wait (or reconnect to the next service's Redis and race
    it). Exiting at once leaves our task unacknowledged; the restarted service requeues it.
    """
    die_with_parent()

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(poll)
        log.error("supervisor %d is gone: exiting", supervisor_pid)
        for child in _children(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found
