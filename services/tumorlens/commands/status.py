"""``tumorlens status``: studies and health as the status API reports them.

tumorlens status                   recent studies, newest first
tumorlens status --state failed    only FAILED ones
tumorlens status UID               one study with its timeline
tumorlens status UID --watch       follow it until DONE/FAILED/CANCELLED (exit 0 if DONE)
tumorlens status --health          components; exit 1 when not serving
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import grpc

from tumorlens.config import Settings, load_settings
from tumorlens.status.client import (
    STATE_NAMES,
    StatusClient,
    as_json,
    describe_rpc_error,
    dumps,
    format_health,
    format_study,
    format_table,
    format_update,
)
from tumorlens.status.transport import is_local_address
from tumorlens.status.v1 import status_pb2 as pb


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """Options of every command that talks to the status API."""
    parser.add_argument(
        "--address", help="status API HOST:PORT (default: the grpc_address setting)"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")


def add_study_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "study", metavar="STUDY_UID", nargs=None if required else "?", help="Study Instance UID"
    )
    parser.add_argument("--version", type=int, default=0, help="study version (default latest)")


def client_from_args(args: argparse.Namespace) -> StatusClient:
    # Settings are read only when needed: for the default address, or TLS off loopback.
    settings: Settings | None = None
    address: str | None = args.address
    if address is None or not is_local_address(address):
        settings = load_settings(args.config)
        address = address or settings.grpc_address
    return StatusClient(address, settings, timeout=args.timeout)


def call_api(args: argparse.Namespace, action: Callable[[StatusClient], int]) -> int:
    """Run ``action`` with a client; an RPC error is reported on stderr, exit status 2."""
    with client_from_args(args) as client:
        try:
            return action(client)
        except grpc.RpcError as exc:
            print(f"tumorlens: error: {describe_rpc_error(exc, client.address)}", file=sys.stderr)
            return 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show studies, one study's timeline, or the service's health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_options(parser, required=False)
    parser.add_argument("--watch", action="store_true", help="follow STUDY_UID's changes")
    parser.add_argument("--limit", type=int, default=20, help="studies to list (default 20)")
    parser.add_argument(
        "--state",
        action="append",
        default=[],
        type=str.upper,
        choices=STATE_NAMES,
        help="list only studies in this state (repeatable)",
    )
    parser.add_argument("--health", action="store_true", help="show the components' health")
    add_client_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.watch and not args.study:
        print("tumorlens: error: --watch needs a STUDY_UID", file=sys.stderr)
        return 2
    if args.health:
        return call_api(args, lambda c: _health(c, args.json))
    if args.study and args.watch:
        return call_api(args, lambda c: _watch(c, args.study, args.version, args.json))
    if args.study:
        return call_api(args, lambda c: _show(c.get(args.study, args.version), args.json))
    return call_api(args, lambda c: _list(c, args.limit, args.state, args.json))


def _show(study: pb.Study, json_out: bool) -> int:
    print(dumps(as_json(study)) if json_out else format_study(study))
    return 0


def _list(client: StatusClient, limit: int, states: list[str], json_out: bool) -> int:
    studies = client.list(limit, states)
    if json_out:
        print(dumps({"studies": [as_json(s) for s in studies]}))
    else:
        print(format_table(studies))
    return 0


def _watch(client: StatusClient, study: str, version: int, json_out: bool) -> int:
    last: pb.Study | None = None
    for update in client.watch(study, version):
        print(dumps(as_json(update), lines=True) if json_out else format_update(update))
        sys.stdout.flush()  # one line per change, also when piped
        last = update
    # The stream ends at a terminal state: say which one in the exit status, for scripts.
    return 0 if last is not None and last.state == pb.JOB_STATE_DONE else 1


def _health(client: StatusClient, json_out: bool) -> int:
    health = client.health()
    print(dumps(as_json(health)) if json_out else format_health(health))
    return 0 if health.serving else 1
