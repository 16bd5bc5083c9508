"""Child processes that do not outlive the service that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Loaded now, not in the forked child: dlopen after fork in a threaded parent can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when our parent dies, so a killed ``serve`` leaves no orphans.

    SIGTERM, not SIGKILL: Redis then saves, and a Celery worker requeues its task. Used as a
    ``preexec_fn`` (a single syscall, safe after fork) or at the start of a supervised child.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_supervisor(supervisor_pid: int) -> None:
    """In a supervised child: die with the supervisor, even if it died before we asked."""
    die_with_parent()
    if os.getppid() != supervisor_pid:
        os.kill(os.getpid(), signal.SIGTERM)
