"""Client side of the status API: a typed stub wrapper and the text the CLI prints."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Final

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tumorlens.config import Settings
from tumorlens.status.transport import open_channel
from tumorlens.status.v1 import status_pb2 as pb
from tumorlens.status.v1 import status_pb2_grpc

_PREFIX: Final = "JOB_STATE_"
STATE_NAMES: Final = tuple(
    v.name.removeprefix(_PREFIX) for v in pb.JobState.DESCRIPTOR.values if v.number != 0
)


def state_name(state: int) -> str:
    """``JOB_STATE_DONE`` -> ``DONE``."""
    try:
        return pb.JobState.Name(state).removeprefix(_PREFIX)
    except ValueError:
        return f"UNKNOWN({state})"


class StatusClient:
    """The ``StudyStatus`` calls with a deadline each; a context manager owning the channel."""

    def __init__(
        self, address: str, settings: Settings | None = None, timeout: float = 10.0
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = open_channel(address, settings)
        self._stub: Any = status_pb2_grpc.StudyStatusStub(self._channel)  # type: ignore[no-untyped-call]

    def get(self, study: str, version: int = 0) -> pb.Study:
        request = pb.GetStudyRequest(study_instance_uid=study, version=version)
        result: pb.Study = self._stub.GetStudy(request, timeout=self.timeout)
        return result

    def list(self, limit: int = 0, states: Sequence[str] = ()) -> list[pb.Study]:
        """``states`` by name, e.g. ``FAILED``."""
        names = [_PREFIX + s.upper() for s in states]
        request = pb.ListStudiesRequest(limit=limit, states=names)
        response: pb.ListStudiesResponse = self._stub.ListStudies(request, timeout=self.timeout)
        return list(response.studies)

    def watch(self, study: str, version: int = 0) -> Iterator[pb.Study]:
        """Updates until a terminal state; stopping the iteration cancels the call."""
        call = self._stub.WatchStudy(
            pb.WatchStudyRequest(study_instance_uid=study, version=version)
        )
        try:
            yield from call
        finally:
            call.cancel()

    def retry(self, study: str, version: int = 0, reason: str = "") -> pb.Study:
        request = pb.RetryStudyRequest(study_instance_uid=study, version=version, reason=reason)
        result: pb.Study = self._stub.RetryStudy(request, timeout=self.timeout)
        return result

    def cancel(self, study: str, version: int = 0, reason: str = "") -> pb.Study:
        request = pb.CancelStudyRequest(study_instance_uid=study, version=version, reason=reason)
        result: pb.Study = self._stub.CancelStudy(request, timeout=self.timeout)
        return result

    def health(self) -> pb.HealthResponse:
        result: pb.HealthResponse = self._stub.Health(pb.HealthRequest(), timeout=self.timeout)
        return result

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> StatusClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def describe_rpc_error(exc: grpc.RpcError, address: str) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in (details or "").lower():
        return f"cannot reach the status API at {address}: {details}"
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}"


# --- rendering ------------------------------------------------------------------------------
def as_json(message: Message) -> dict[str, Any]:
    """Proto3 JSON mapping with the .proto's field names, zero values included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def dumps(data: Any, *, lines: bool = False) -> str:
    return json.dumps(data) if lines else json.dumps(data, indent=2)


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_time(ts: Timestamp, *, millis: bool = False) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    local = dt.datetime.fromtimestamp(_seconds(ts)).astimezone()
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{local.microsecond // 1000:03d}" if millis else text


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())  # reasons may hold newlines (tracebacks)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(studies: Sequence[pb.Study], now: float | None = None) -> str:
    """One line per study: what an operator scans for."""
    if not studies:
        return "no studies"
    now = time.time() if now is None else now
    header = ("STUDY INSTANCE UID", "V", "STATE", "STEP", "INST", "SERIES", "AGE", "ERROR")
    rows = [
        (
            s.study_instance_uid,
            str(s.version),
            state_name(s.state),
            s.step or "-",
            str(s.instances),
            str(s.series),
            format_age(now - _seconds(s.created)) if s.HasField("created") else "-",
            _clip(s.error, 60) if s.error else "",
        )
        for s in studies
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]
        ).rstrip()
        for row in [header, *rows]
    )


def format_study(study: pb.Study, now: float | None = None) -> str:
    """One study with its timeline."""
    now = time.time() if now is None else now
    created = _seconds(study.created)
    fields: list[tuple[str, str]] = [
        ("Study", study.study_instance_uid),
        ("Version", str(study.version)),
        ("State", state_name(study.state) + (f" ({study.step})" if study.step else "")),
        (
            "Instances",
            f"{study.instances} in {study.series} series ({study.new_instances} new in this "
            "version)",
        ),
        ("From", f"{study.calling_ae_title or '?'} at {study.calling_host or '?'}"),
        ("Attempts", str(study.attempts) + (f" (worker {study.worker})" if study.worker else "")),
    ]
    if study.error:
        fields.append(("Error", study.error))
    fields += [
        ("Created", f"{format_time(study.created)} ({format_age(now - created)} ago)"),
        ("Updated", format_time(study.updated)),
        ("Last arrival", format_time(study.last_arrival)),
    ]
    details = json.loads(study.details_json) if study.details_json else {}
    if details:
        fields.append(("Details", json.dumps(details, sort_keys=True)))
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {value}" for name, value in fields]
    lines += ["", "Timeline"]
    step_width = max((len(e.step) for e in study.timeline), default=0)
    for entry in study.timeline:
        offset = max(0.0, _seconds(entry.time) - created)  # no "-0.0s" from rounding
        parts = [
            f"  {format_time(entry.time, millis=True)}",
            f"{'+' + format_offset(offset):>9}",
            state_name(entry.state).ljust(9),
            entry.step.ljust(step_width),
        ]
        if entry.reason:
            parts.append(f"- {entry.reason}")
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_offset(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_age(seconds)


def format_update(study: pb.Study) -> str:
    """One line per WatchStudy update."""
    line = f"{format_time(study.updated, millis=True)}  {state_name(study.state)}"
    if study.step:
        line += f" ({study.step})"
    if study.error:
        line += f": {study.error}"
    return line


def format_result(study: pb.Study) -> str:
    """What a retry or cancel left the study in."""
    line = f"{study.study_instance_uid} v{study.version}: {state_name(study.state)}"
    return line + (f" ({study.error})" if study.error else "")


def format_health(health: pb.HealthResponse) -> str:
    lines = ["serving" if health.serving else "NOT SERVING"]
    width = max((len(c.name) for c in health.components), default=0)
    for c in health.components:
        mark = "ok " if c.ok else "BAD" if c.critical else "-- "
        lines.append(f"  {mark}  {c.name.ljust(width)}  {c.detail}")
    return "\n".join(lines)
