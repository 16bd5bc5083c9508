"""The ``tumorlens.v1.StudyStatus`` servicer: reads the job store and translates.

It holds no logic of its own: state changes are the job store's transitions, and every
domain error becomes a status code through :func:`tumorlens.errors.grpc_code_for`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Final, NoReturn, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tumorlens.errors import InvalidRequestError, ServerBusyError, TumorlensError, grpc_code_for
from tumorlens.identifiers import validate_uid
from tumorlens.status.health import HealthProbe
from tumorlens.status.v1 import status_pb2 as pb
from tumorlens.status.v1 import status_pb2_grpc
from tumorlens.store.jobs import Job, JobRef, JobStore
from tumorlens.store.states import TERMINAL_STATES, JobState

log = logging.getLogger(__name__)

_S = TypeVar("_S")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

STATE_TO_PROTO: Final[dict[JobState, pb.JobState]] = {
    JobState.RECEIVING: pb.JOB_STATE_RECEIVING,
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SENDING: pb.JOB_STATE_SENDING,
    JobState.DONE: pb.JOB_STATE_DONE,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
STATE_FROM_PROTO: Final[dict[int, JobState]] = {v: k for k, v in STATE_TO_PROTO.items()}

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
# WatchStudy polls no faster than this (Redis load) and no slower (operators' patience).
MIN_POLL_INTERVAL: Final = 0.05
MAX_POLL_INTERVAL: Final = 5.0


def _bad_request(message: str) -> InvalidRequestError:
    return InvalidRequestError(message)


def _timestamp(seconds: float) -> Timestamp | None:
    if seconds <= 0:  # never set
        return None
    ts = Timestamp()
    # The store keeps float seconds: finer than microseconds would only show float noise.
    ts.FromMicroseconds(round(seconds * 1e6))
    return ts


def study_message(job: Job) -> pb.Study:
    """The API's view of a job."""
    return pb.Study(
        study_instance_uid=job.study_instance_uid,
        version=job.version,
        state=STATE_TO_PROTO[job.state],
        step=job.step,
        instances=job.instances,
        series=job.series,
        new_instances=job.new_instances,
        calling_ae_title=job.calling_aet,
        calling_host=job.calling_host,
        attempts=job.attempts,
        worker=job.worker,
        error=job.error,
        created=_timestamp(job.created),
        updated=_timestamp(job.updated),
        last_arrival=_timestamp(job.last_arrival),
        details_json=json.dumps(job.details, sort_keys=True),
        timeline=[
            pb.TimelineEntry(
                state=STATE_TO_PROTO[e.state],
                step=e.step,
                time=_timestamp(e.time),
                reason=e.reason,
            )
            for e in job.timeline
        ],
    )


def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    """End the call with the status code ``exc`` maps to (``context.abort`` raises)."""
    if isinstance(exc, TumorlensError):
        context.abort(grpc_code_for(exc), str(exc))
    else:
        log.error("status API call failed", exc_info=exc)
        context.abort(grpc_code_for(exc), f"internal error: {type(exc).__name__}")
    raise AssertionError("context.abort returned")


def _unary(
    method: Callable[[_S, _Req, grpc.ServicerContext], _Resp],
) -> Callable[[_S, _Req, grpc.ServicerContext], _Resp]:
    """Map whatever ``method`` raises to a status code, in one place."""

    @functools.wraps(method)
    def call(self: _S, request: _Req, context: grpc.ServicerContext) -> _Resp:
        # context.abort is never called inside the try: it raises a bare Exception, which
        # the handler would otherwise catch and report as INTERNAL.
        try:
            return method(self, request, context)
        except Exception as exc:
            _abort(context, exc)

    return call


def _streaming(
    method: Callable[[_S, _Req, grpc.ServicerContext], Iterator[_Resp]],
) -> Callable[[_S, _Req, grpc.ServicerContext], Iterator[_Resp]]:
    """:func:`_unary` for server-streaming methods."""

    @functools.wraps(method)
    def call(self: _S, request: _Req, context: grpc.ServicerContext) -> Iterator[_Resp]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            _abort(context, exc)

    return call


def _ref(jobs: JobStore, study_instance_uid: str, version: int) -> JobRef:
    validate_uid(study_instance_uid, "study_instance_uid")
    if version < 0:
        raise _bad_request(f"version must be >= 0, not {version}")
    return JobRef(study_instance_uid, version or jobs.current_version(study_instance_uid))


def _peer(context: grpc.ServicerContext) -> str:
    peer = context.peer()
    return str(peer) if peer else "unknown peer"


class StudyStatusServicer(status_pb2_grpc.StudyStatusServicer):
    """Serves the job store read-only, except for retry and cancel (a state change each)."""

    def __init__(
        self,
        jobs: JobStore,
        health: HealthProbe,
        *,
        poll_interval: float = 0.5,
        max_watches: int = 8,
    ) -> None:
        self._jobs = jobs
        self._health = health
        self._poll = min(max(poll_interval, MIN_POLL_INTERVAL), MAX_POLL_INTERVAL)
        # Each watch holds a server thread for its lifetime; cap them so that unary calls
        # always find a free thread.
        self._watch_slots = threading.BoundedSemaphore(max_watches)
        self._active_watches = 0
        self._lock = threading.Lock()

    @property
    def active_watches(self) -> int:
        with self._lock:
            return self._active_watches

    @contextlib.contextmanager
    def _watch_slot(self) -> Iterator[None]:
        if not self._watch_slots.acquire(blocking=False):
            raise ServerBusyError("too many WatchStudy calls; try again later")
        with self._lock:
            self._active_watches += 1
        try:
            yield
        finally:
            with self._lock:
                self._active_watches -= 1
            self._watch_slots.release()

    @_unary
    def GetStudy(  # noqa: N802 - gRPC method name
        self, request: pb.GetStudyRequest, context: grpc.ServicerContext
    ) -> pb.Study:
        ref = _ref(self._jobs, request.study_instance_uid, request.version)
        return study_message(self._jobs.get(ref.study_instance_uid, ref.version))

    @_unary
    def ListStudies(  # noqa: N802
        self, request: pb.ListStudiesRequest, context: grpc.ServicerContext
    ) -> pb.ListStudiesResponse:
        if request.limit < 0:
            raise _bad_request(f"limit must be >= 0, not {request.limit}")
        unknown = [s for s in request.states if s not in STATE_FROM_PROTO]
        if unknown:
            raise _bad_request(f"states {unknown} are not job states")
        states = frozenset(STATE_FROM_PROTO[s] for s in request.states) or None
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        jobs = self._jobs.list_jobs(limit=limit, states=states)
        return pb.ListStudiesResponse(studies=[study_message(j) for j in jobs])

    @_streaming
    def WatchStudy(  # noqa: N802
        self, request: pb.WatchStudyRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Study]:
        ref = _ref(self._jobs, request.study_instance_uid, request.version)
        with self._watch_slot():
            ended = threading.Event()
            # Called when the client cancels or its deadline passes: wakes the poll at once.
            context.add_callback(ended.set)
            last: Job | None = None
            while not ended.is_set():
                job = self._jobs.get(ref.study_instance_uid, ref.version)
                if job != last:
                    yield study_message(job)
                    last = job
                if job.state in TERMINAL_STATES:
                    return
                ended.wait(self._poll)

    @_unary
    def RetryStudy(  # noqa: N802
        self, request: pb.RetryStudyRequest, context: grpc.ServicerContext
    ) -> pb.Study:
        ref = _ref(self._jobs, request.study_instance_uid, request.version)
        reason = f"retried by {_peer(context)}" + (f": {request.reason}" if request.reason else "")
        # requeue puts the job in the dispatch set, which the assembler hands to Celery.
        self._jobs.transition(ref, JobState.QUEUED, reason=reason, requeue=True)
        return study_message(self._jobs.get(ref.study_instance_uid, ref.version))

    @_unary
    def CancelStudy(  # noqa: N802
        self, request: pb.CancelStudyRequest, context: grpc.ServicerContext
    ) -> pb.Study:
        ref = _ref(self._jobs, request.study_instance_uid, request.version)
        reason = f"cancelled by {_peer(context)}" + (
            f": {request.reason}" if request.reason else ""
        )
        self._jobs.transition(ref, JobState.CANCELLED, reason=reason)
        return study_message(self._jobs.get(ref.study_instance_uid, ref.version))

    @_unary
    def Health(  # noqa: N802
        self, request: pb.HealthRequest, context: grpc.ServicerContext
    ) -> pb.HealthResponse:
        # Never fails: an unhealthy component is the answer, not an error.
        report = self._health.check()
        return pb.HealthResponse(
            serving=report.serving,
            components=[
                pb.Component(name=c.name, ok=c.ok, detail=c.detail, critical=c.critical)
                for c in report.components
            ],
        )
