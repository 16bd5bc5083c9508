"""``tumorlens resend STUDY_UID``: deliver a study's results from the outbox again."""

from __future__ import annotations

import argparse
from pathlib import Path

from tumorlens.commands.common import settings_from_args
from tumorlens.config import Destination
from tumorlens.sender.deliver import RetryPolicy, deliver, resolve_destinations
from tumorlens.sender.outbox import Outbox


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "resend", help="send a study's results (SEG, SR, PDF) from the outbox again"
    )
    parser.add_argument("study_instance_uid", metavar="STUDY_UID")
    parser.add_argument("--version", type=int, help="study version (default: the latest)")
    parser.add_argument(
        "--to",
        action="append",
        type=Destination.parse,
        metavar="AE@HOST:PORT",
        help="destination (repeatable; default: destinations, else the sender via peers)",
    )
    parser.add_argument("--data-dir", type=Path, help="data directory (default: settings)")
    parser.add_argument(
        "--attempts", type=int, help="tries per destination (default: delivery_attempts)"
    )
    parser.add_argument(
        "--all", action="store_true", help="send every object, also those delivered before"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    batch = Outbox(settings.outbox_dir).load(args.study_instance_uid, args.version)
    # Where the worker would send: 'destinations', else back to the sender via 'peers'.
    destinations = tuple(args.to or resolve_destinations(settings, batch.calling_aet))
    if args.all:
        for destination in destinations:
            batch.delivered.pop(str(destination), None)
    report = deliver(
        batch,
        destinations,
        settings.ae_title,
        RetryPolicy(attempts=max(1, args.attempts or settings.delivery_attempts)),  # --attempts 0
    )
    for destination, count in report.sent.items():
        print(f"{destination}: {count} object(s) sent, {len(batch.objects)} in the outbox")
    return 0
