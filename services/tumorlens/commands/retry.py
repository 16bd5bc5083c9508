"""``tumorlens retry``: queue a FAILED, CANCELLED or DONE study again, via the status API."""

from __future__ import annotations

import argparse

from tumorlens.commands.status import add_client_options, add_study_options, call_api
from tumorlens.status.client import StatusClient, as_json, dumps, format_result


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("retry", help="queue a failed or cancelled study again")
    add_study_options(parser, required=True)
    parser.add_argument("--reason", default="", help="recorded in the study's timeline")
    add_client_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def retry(client: StatusClient) -> int:
        study = client.retry(args.study, args.version, args.reason)
        print(dumps(as_json(study)) if args.json else format_result(study))
        return 0

    return call_api(args, retry)
