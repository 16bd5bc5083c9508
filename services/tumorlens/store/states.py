"""Job states and the one table of allowed transitions."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class JobState(StrEnum):
    RECEIVING = "RECEIVING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SENDING = "SENDING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL_STATES: Final = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

# target state -> states it may be entered from. RUNNING -> RUNNING is a redelivery after a
# worker crash; FAILED/CANCELLED -> QUEUED is an operator's retry.
ALLOWED_FROM: Final[dict[JobState, frozenset[JobState]]] = {
    JobState.QUEUED: frozenset(
        {JobState.RECEIVING, JobState.FAILED, JobState.CANCELLED, JobState.DONE}
    ),
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.RUNNING}),
    JobState.SENDING: frozenset({JobState.RUNNING, JobState.SENDING}),
    JobState.DONE: frozenset({JobState.RUNNING, JobState.SENDING}),
    JobState.FAILED: frozenset(
        {JobState.RECEIVING, JobState.QUEUED, JobState.RUNNING, JobState.SENDING}
    ),
    JobState.CANCELLED: frozenset({JobState.RECEIVING, JobState.QUEUED, JobState.RUNNING}),
}


def is_allowed(current: JobState, target: JobState) -> bool:
    return current in ALLOWED_FROM.get(target, frozenset())
