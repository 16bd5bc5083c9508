"""``tumorlens worker``: a Celery worker that analyses queued studies."""

from __future__ import annotations

import argparse
import os
import socket

from tumorlens.childproc import die_with_supervisor
from tumorlens.commands.common import add_service_options, settings_from_args
from tumorlens.service import open_backend
from tumorlens.worker.celery_app import QUEUE, create_celery


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("worker", help="run an analysis worker (Celery)")
    add_service_options(parser)
    parser.add_argument("--concurrency", type=int, help="worker processes (default: settings)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    supervisor = os.environ.get("TUMORLENS_SUPERVISOR_PID")
    if supervisor:
        die_with_supervisor(int(supervisor))
    concurrency = args.concurrency or settings.worker_concurrency
    with open_backend(settings) as backend:
        app = create_celery(settings, backend.redis_url)
        app.worker_main(
            [
                "worker",
                "--queues",
                QUEUE,
                "--concurrency",
                str(concurrency),
                "--pool",
                "prefork",
                "--hostname",
                f"tumorlens@{socket.gethostname()}",
                "--loglevel",
                settings.log_level,
                "--without-gossip",
                "--without-mingle",
            ]
        )
    return 0
