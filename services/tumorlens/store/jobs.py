"""The job store: one record per study version in Redis, changed only by atomic scripts.

Keys (prefix ``tl:``):

- ``study:<uid>``                hash: ``version`` (current), ``first_seen``
- ``study:<uid>:instances``      set of SOP Instance UIDs ever received (dedup authority)
- ``study:<uid>:series``         set of Series Instance UIDs
- ``job:<uid>:<version>``        hash: state, step, counts, calling AE, attempts, error...
- ``job:<uid>:<version>:timeline`` list of JSON ``{state, step, time, reason}``
- ``receiving``                  zset study -> time of last arrival (assembler's work list)
- ``dispatch``                   zset ``<uid>|<version>`` -> time claimed, until handed to Celery
- ``jobs``                       zset ``<uid>|<version>`` -> creation time (listing)

Every state change goes through a Lua script that checks the transition against
:data:`tumorlens.store.states.ALLOWED_FROM`, so concurrent listeners, assemblers and workers
never race each other into an impossible state.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

import redis

from tumorlens.errors import (
    InvalidTransitionError,
    JobStoreUnavailableError,
    StudyNotFoundError,
)
from tumorlens.identifiers import InstanceKey, validate_uid
from tumorlens.store.states import ALLOWED_FROM, JobState

PREFIX: Final = "tl:"
_JOB: Final = PREFIX + "job:"
_RECEIVING: Final = PREFIX + "receiving"
_DISPATCH: Final = PREFIX + "dispatch"
_JOBS: Final = PREFIX + "jobs"


def _allowed(target: JobState) -> str:
    return ",".join(sorted(ALLOWED_FROM[target]))


# Shared Lua helpers, prepended to each script.
_LUA_PRELUDE = """
local function allowed(list, state)
  for s in string.gmatch(list, '[^,]+') do
    if s == state then return true end
  end
  return false
end
local function log(jk, state, step, now, reason)
  redis.call('RPUSH', jk .. ':timeline',
    cjson.encode({state=state, step=step, time=tonumber(now), reason=reason}))
end
"""

_RECORD_INSTANCE = (
    _LUA_PRELUDE
    + """
-- KEYS: study hash, instances set, series set, receiving zset, jobs zset
-- ARGV: study, series, sop, now, calling_aet, calling_host, job prefix
local study, series, sop, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local added = redis.call('SADD', KEYS[2], sop)
local v = redis.call('HGET', KEYS[1], 'version')
local state = false
if v then state = redis.call('HGET', ARGV[7] .. study .. ':' .. v, 'state') end
if added == 0 then
  -- A duplicate keeps an open study's quiet timer running but never starts a new version.
  if state == 'RECEIVING' then
    redis.call('HSET', ARGV[7] .. study .. ':' .. v, 'last_arrival', now)
    redis.call('ZADD', KEYS[4], now, study)
  end
  return {0, v or '0'}
end
redis.call('SADD', KEYS[3], series)
if state ~= 'RECEIVING' then
  if not v then redis.call('HSET', KEYS[1], 'first_seen', now) end
  v = tostring(redis.call('HINCRBY', KEYS[1], 'version', 1))
  local jk = ARGV[7] .. study .. ':' .. v
  redis.call('HSET', jk, 'study_instance_uid', study, 'version', v, 'state', 'RECEIVING',
    'step', '', 'created', now, 'calling_aet', ARGV[5], 'calling_host', ARGV[6],
    'attempts', 0, 'error', '', 'new_instances', 0)
  log(jk, 'RECEIVING', '', now, '')
  redis.call('ZADD', KEYS[5], now, study .. '|' .. v)
end
local jk = ARGV[7] .. study .. ':' .. v
redis.call('HSET', jk, 'last_arrival', now, 'updated', now,
  'instances', redis.call('SCARD', KEYS[2]), 'series', redis.call('SCARD', KEYS[3]))
redis.call('HINCRBY', jk, 'new_instances', 1)
redis.call('ZADD', KEYS[4], now, study)
return {1, v}
"""
)

_TRANSITION = (
    _LUA_PRELUDE
    + """
-- KEYS: job hash, receiving zset, dispatch zset
-- ARGV: target, step, reason, now, allowed-from, study, version, dispatch(0/1)
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, ''} end
if not allowed(ARGV[5], state) then return {0, state} end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'step', ARGV[2], 'updated', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
if state == 'RECEIVING' then redis.call('ZREM', KEYS[2], ARGV[6]) end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'attempts', 0, 'error', '')
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6] .. '|' .. ARGV[7])
end
log(KEYS[1], ARGV[1], ARGV[2], ARGV[4], ARGV[3])
return {1, state}
"""
)

_CLAIM_STABLE = (
    _LUA_PRELUDE
    + """
-- KEYS: study hash, receiving zset, dispatch zset
-- ARGV: study, now, cutoff, job prefix, allowed-from for QUEUED
local v = redis.call('HGET', KEYS[1], 'version')
if not v then redis.call('ZREM', KEYS[2], ARGV[1]); return 0 end
local jk = ARGV[4] .. ARGV[1] .. ':' .. v
local state = redis.call('HGET', jk, 'state')
if state ~= 'RECEIVING' then redis.call('ZREM', KEYS[2], ARGV[1]); return 0 end
if tonumber(redis.call('HGET', jk, 'last_arrival')) > tonumber(ARGV[3]) then return 0 end
if not allowed(ARGV[5], state) then return 0 end
redis.call('HSET', jk, 'state', 'QUEUED', 'step', '', 'updated', ARGV[2])
log(jk, 'QUEUED', '', ARGV[2], '')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1] .. '|' .. v)
return tonumber(v)
"""
)

_BEGIN_ATTEMPT = (
    _LUA_PRELUDE
    + """
-- KEYS: job hash
-- ARGV: max attempts, now, worker, allowed-from for RUNNING, allowed-from for FAILED
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, ''} end
if not allowed(ARGV[4], state) then return {0, state} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[1]) and allowed(ARGV[5], state) then
  local reason = 'worker crashed or was lost in ' .. (attempts - 1) ..
    ' attempts; not retried again (dead letter)'
  redis.call('HSET', KEYS[1], 'state', 'FAILED', 'step', '', 'error', reason,
    'updated', ARGV[2])
  log(KEYS[1], 'FAILED', '', ARGV[2], reason)
  return {2, state}
end
redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'step', 'starting', 'worker', ARGV[3],
  'updated', ARGV[2])
log(KEYS[1], 'RUNNING', 'starting', ARGV[2], 'attempt ' .. attempts)
return {1, tostring(attempts)}
"""
)

_TAKE_DISPATCH = """
-- KEYS: dispatch zset; ARGV: member, cutoff, now
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


class AttemptDecision(Enum):
    RUN = "run"
    SKIP = "skip"  # already finished, cancelled, or a stale duplicate message
    DEAD_LETTER = "dead_letter"  # too many crashed attempts: now FAILED


@dataclass(frozen=True)
class RecordedInstance:
    version: int
    new: bool  # False for a duplicate SOP Instance UID


@dataclass(frozen=True)
class TimelineEntry:
    state: JobState
    step: str
    time: float
    reason: str = ""


@dataclass(frozen=True)
class Job:
    """One study version as the job store knows it."""

    study_instance_uid: str
    version: int
    state: JobState
    step: str
    instances: int
    series: int
    new_instances: int
    calling_aet: str
    calling_host: str
    attempts: int
    error: str
    created: float
    updated: float
    last_arrival: float
    worker: str = ""  # host:pid of the process running the latest attempt
    details: Mapping[str, Any] = field(default_factory=dict)
    timeline: tuple[TimelineEntry, ...] = ()


@dataclass(frozen=True)
class JobRef:
    study_instance_uid: str
    version: int

    @property
    def member(self) -> str:
        return f"{self.study_instance_uid}|{self.version}"

    @classmethod
    def from_member(cls, member: str) -> JobRef:
        study, version = member.split("|", 1)
        return cls(study, int(version))


def _job_key(study: str, version: int) -> str:
    return f"{_JOB}{study}:{version}"


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise JobStoreUnavailableError(f"job store (Redis) unreachable: {exc}") from exc


class JobStore:
    """Typed access to the job records; safe to share between threads."""

    def __init__(self, client: redis.Redis[str]) -> None:
        self._r = client
        self._record = client.register_script(_RECORD_INSTANCE)
        self._transition = client.register_script(_TRANSITION)
        self._claim = client.register_script(_CLAIM_STABLE)
        self._begin = client.register_script(_BEGIN_ATTEMPT)
        self._take = client.register_script(_TAKE_DISPATCH)

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=30))

    def ping(self) -> bool:
        with _redis_errors():
            return bool(self._r.ping())

    # --- listener -----------------------------------------------------------------------
    def record_instance(
        self, key: InstanceKey, calling_aet: str, calling_host: str, now: float | None = None
    ) -> RecordedInstance:
        """Count a received instance once and keep its study's quiet timer running."""
        study = key.study_instance_uid
        with _redis_errors():
            added, version = self._record(
                keys=[
                    f"{PREFIX}study:{study}",
                    f"{PREFIX}study:{study}:instances",
                    f"{PREFIX}study:{study}:series",
                    _RECEIVING,
                    _JOBS,
                ],
                args=[
                    study,
                    key.series_instance_uid,
                    key.sop_instance_uid,
                    repr(time.time() if now is None else now),
                    calling_aet,
                    calling_host,
                    _JOB,
                ],
            )
        return RecordedInstance(version=int(version), new=bool(int(added)))

    def known_instance_count(self, study: str) -> int:
        with _redis_errors():
            return int(self._r.scard(f"{PREFIX}study:{study}:instances"))

    def is_known_instance(self, study: str, sop_instance_uid: str) -> bool:
        with _redis_errors():
            return bool(self._r.sismember(f"{PREFIX}study:{study}:instances", sop_instance_uid))

    # --- assembler ----------------------------------------------------------------------
    def claim_stable(self, stable_age: float, now: float | None = None) -> list[JobRef]:
        """Move every study quiet for ``stable_age`` s from RECEIVING to QUEUED, atomically.

        Several assemblers may call this at once; each study version is claimed exactly once.
        Claimed jobs wait in the dispatch set until :meth:`dispatched` is called.
        """
        now = time.time() if now is None else now
        cutoff = now - stable_age
        claimed: list[JobRef] = []
        with _redis_errors():
            candidates = self._r.zrangebyscore(_RECEIVING, "-inf", repr(cutoff))
            for study in candidates:
                version = self._claim(
                    keys=[f"{PREFIX}study:{study}", _RECEIVING, _DISPATCH],
                    args=[study, repr(now), repr(cutoff), _JOB, _allowed(JobState.QUEUED)],
                )
                if int(version):
                    claimed.append(JobRef(study, int(version)))
        return claimed

    def stale_dispatches(self, grace: float, now: float | None = None) -> list[JobRef]:
        """Claimed jobs never handed to the queue (their assembler died); each taken once."""
        now = time.time() if now is None else now
        cutoff = now - grace
        taken: list[JobRef] = []
        with _redis_errors():
            for member in self._r.zrangebyscore(_DISPATCH, "-inf", repr(cutoff)):
                if int(self._take(keys=[_DISPATCH], args=[member, repr(cutoff), repr(now)])):
                    taken.append(JobRef.from_member(member))
        return taken

    def dispatched(self, ref: JobRef) -> None:
        """The job's task message is in the queue."""
        with _redis_errors():
            self._r.zrem(_DISPATCH, ref.member)

    def receiving_studies(self) -> list[str]:
        with _redis_errors():
            return list(self._r.zrange(_RECEIVING, 0, -1))

    # --- worker -------------------------------------------------------------------------
    def begin_attempt(
        self, ref: JobRef, max_attempts: int, worker: str, now: float | None = None
    ) -> AttemptDecision:
        """Enter RUNNING for a new attempt, or end FAILED once attempts are exhausted."""
        with _redis_errors():
            code, _ = self._begin(
                keys=[_job_key(ref.study_instance_uid, ref.version)],
                args=[
                    max_attempts,
                    repr(time.time() if now is None else now),
                    worker,
                    _allowed(JobState.RUNNING),
                    _allowed(JobState.FAILED),
                ],
            )
        code = int(code)
        if code == -1:
            raise StudyNotFoundError(f"no job {ref.member}")
        if code == 2:
            return AttemptDecision.DEAD_LETTER
        return AttemptDecision.RUN if code == 1 else AttemptDecision.SKIP

    def transition(
        self,
        ref: JobRef,
        target: JobState,
        step: str = "",
        reason: str = "",
        now: float | None = None,
        *,
        requeue: bool = False,
    ) -> JobState:
        """Change state, checked against the allowed transitions; returns the previous state.

        ``requeue`` (for target QUEUED) resets the attempt counter and puts the job in the
        dispatch set, which is how an operator's retry reaches the queue.
        """
        with _redis_errors():
            code, previous = self._transition(
                keys=[_job_key(ref.study_instance_uid, ref.version), _RECEIVING, _DISPATCH],
                args=[
                    target.value,
                    step,
                    reason,
                    repr(time.time() if now is None else now),
                    _allowed(target),
                    ref.study_instance_uid,
                    ref.version,
                    "1" if requeue else "0",
                ],
            )
        if int(code) == -1:
            raise StudyNotFoundError(f"no job for study {ref.study_instance_uid} v{ref.version}")
        if int(code) == 0:
            raise InvalidTransitionError(
                f"study {ref.study_instance_uid} v{ref.version}: {previous} -> {target} "
                "is not allowed"
            )
        return JobState(previous)

    def set_step(self, ref: JobRef, state: JobState, step: str) -> None:
        """Record progress within RUNNING or SENDING (a timeline entry per step)."""
        self.transition(ref, state, step=step)

    def set_details(self, ref: JobRef, **details: Any) -> None:
        """Merge JSON-serialisable facts (counts, geometry, findings) into the job."""
        key = _job_key(ref.study_instance_uid, ref.version)
        with _redis_errors():
            current = self._r.hget(key, "details")
            merged = json.loads(current) if current else {}
            merged.update(details)
            self._r.hset(key, mapping={"details": json.dumps(merged)})

    # --- reading --------------------------------------------------------------------------
    def current_version(self, study: str) -> int:
        validate_uid(study, "StudyInstanceUID")
        with _redis_errors():
            version = self._r.hget(f"{PREFIX}study:{study}", "version")
        if version is None:
            raise StudyNotFoundError(f"no job for study {study}")
        return int(version)

    def get(self, study: str, version: int | None = None) -> Job:
        if version is None:
            version = self.current_version(study)
        key = _job_key(study, version)
        with _redis_errors():
            raw = self._r.hgetall(key)
            timeline = self._r.lrange(key + ":timeline", 0, -1)
        if not raw:
            raise StudyNotFoundError(f"no job for study {study} v{version}")
        return _job_from_hash(raw, timeline)

    def list_jobs(self, limit: int = 100, states: frozenset[JobState] | None = None) -> list[Job]:
        """Newest first."""
        jobs: list[Job] = []
        page = max(limit, 50)
        start = 0
        while len(jobs) < limit:
            with _redis_errors():
                members = self._r.zrevrange(_JOBS, start, start + page - 1)
            if not members:
                break
            start += page
            for member in members:
                ref = JobRef.from_member(member)
                try:
                    job = self.get(ref.study_instance_uid, ref.version)
                except StudyNotFoundError:
                    continue
                if states is None or job.state in states:
                    jobs.append(job)
                if len(jobs) >= limit:
                    break
        return jobs


def _job_from_hash(raw: Mapping[str, str], timeline: list[str]) -> Job:
    entries = []
    for item in timeline:
        data = json.loads(item)
        entries.append(
            TimelineEntry(
                state=JobState(data["state"]),
                step=str(data.get("step") or ""),
                time=float(data["time"]),
                reason=str(data.get("reason") or ""),
            )
        )
    return Job(
        study_instance_uid=raw["study_instance_uid"],
        version=int(raw["version"]),
        state=JobState(raw["state"]),
        step=raw.get("step", ""),
        instances=int(raw.get("instances", 0)),
        series=int(raw.get("series", 0)),
        new_instances=int(raw.get("new_instances", 0)),
        calling_aet=raw.get("calling_aet", ""),
        calling_host=raw.get("calling_host", ""),
        attempts=int(raw.get("attempts", 0)),
        error=raw.get("error", ""),
        created=float(raw.get("created", 0.0)),
        updated=float(raw.get("updated", 0.0)),
        last_arrival=float(raw.get("last_arrival", 0.0)),
        worker=raw.get("worker", ""),
        details=json.loads(raw["details"]) if raw.get("details") else {},
        timeline=tuple(entries),
    )
