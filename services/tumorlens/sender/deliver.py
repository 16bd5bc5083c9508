"""Delivery of an outbox batch to its destinations by C-STORE, retried with backoff.

A destination counts as served when every object got Success or a Warning status
(PS3.4 B.2.3). Anything else is retried; after the last attempt a :class:`DeliveryError`
names each destination with what is missing and why, and the outbox stays on disk for
``tumorlens resend``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tumorlens.config import Destination, Settings
from tumorlens.errors import DeliveryError
from tumorlens.sender.outbox import OutboxBatch
from tumorlens.sender.scu import push

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_delay: float = 2.0
    max_delay: float = 60.0

    def delays(self) -> list[float]:
        """Seconds to wait before each retry: doubling, capped."""
        return [min(self.first_delay * 2**i, self.max_delay) for i in range(self.attempts - 1)]


@dataclass(frozen=True)
class DeliveryReport:
    sent: dict[str, int]  # destination -> objects delivered in this call
    attempts: dict[str, int]


def resolve_destinations(settings: Settings, calling_aet: str) -> tuple[Destination, ...]:
    """Configured destinations, else the sending PACS's return address from ``peers``."""
    if settings.destinations:
        return settings.destinations
    matching = tuple(p for p in settings.peers if p.ae_title == calling_aet)
    if not matching:
        raise DeliveryError(
            f"no destination: set 'destinations', or add the sender {calling_aet!r} to "
            "'peers' (AE@host:port) so results can go back to it"
        )
    return matching


def deliver(
    batch: OutboxBatch,
    destinations: Sequence[Destination],
    calling_aet: str,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryReport:
    """Send what each destination has not received yet; raise if any stays undelivered."""
    sent: dict[str, int] = {}
    attempts: dict[str, int] = {}
    problems: list[str] = []
    for destination in destinations:
        key = str(destination)
        sent[key] = 0
        last_error = ""
        for attempt, delay in enumerate([0.0, *policy.delays()], start=1):
            pending = batch.pending(key)
            if not pending:
                break
            if delay:
                log.info("retrying delivery to %s in %.0f s", key, delay)
                sleep(delay)
            attempts[key] = attempt
            try:
                result = push(
                    [o.path for o in pending],
                    destination.host,
                    destination.port,
                    destination.ae_title,
                    calling_aet,
                )
            except DeliveryError as exc:
                last_error = str(exc)
                log.warning("delivery to %s failed (attempt %d): %s", key, attempt, exc)
                continue
            failed = {str(outcome.path) for outcome in result.failed}
            done = [o.sop_instance_uid for o in pending if str(o.path) not in failed]
            batch.mark_delivered(key, done)
            sent[key] += len(done)
            if result.failed:
                first = result.failed[0]
                last_error = f"{len(result.failed)} refused, e.g. {first.path.name}: {first.reason}"
        missing = batch.pending(key)
        if missing:
            problems.append(
                f"{key}: {len(missing)} of {len(batch.objects)} not delivered ({last_error})"
            )
    if problems:
        raise DeliveryError("results not delivered after retries: " + "; ".join(problems))
    return DeliveryReport(sent=sent, attempts=attempts)
