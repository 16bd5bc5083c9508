# Regenerate with `python proto/generate.py` (grpcio-tools 1.85.1).
# mypy: ignore-errors
# ruff: noqa
# fmt: off
import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_RECEIVING: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SENDING: _ClassVar[JobState]
    JOB_STATE_DONE: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_RECEIVING: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SENDING: JobState
JOB_STATE_DONE: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class GetStudyRequest(_message.Message):
    __slots__ = ("study_instance_uid", "version")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    version: int
    def __init__(self, study_instance_uid: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ("limit", "states")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    limit: int
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, limit: _Optional[int] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListStudiesResponse(_message.Message):
    __slots__ = ("studies",)
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[Study]
    def __init__(self, studies: _Optional[_Iterable[_Union[Study, _Mapping]]] = ...) -> None: ...

class WatchStudyRequest(_message.Message):
    __slots__ = ("study_instance_uid", "version")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    version: int
    def __init__(self, study_instance_uid: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RetryStudyRequest(_message.Message):
    __slots__ = ("study_instance_uid", "version", "reason")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    version: int
    reason: str
    def __init__(self, study_instance_uid: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelStudyRequest(_message.Message):
    __slots__ = ("study_instance_uid", "version", "reason")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    version: int
    reason: str
    def __init__(self, study_instance_uid: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("study_instance_uid", "version", "state", "step", "instances", "series", "new_instances", "calling_ae_title", "calling_host", "attempts", "error", "created", "updated", "last_arrival", "details_json", "timeline", "worker")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    NEW_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    CALLING_HOST_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    LAST_ARRIVAL_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    version: int
    state: JobState
    step: str
    instances: int
    series: int
    new_instances: int
    calling_ae_title: str
    calling_host: str
    attempts: int
    error: str
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    last_arrival: _timestamp_pb2.Timestamp
    details_json: str
    timeline: _containers.RepeatedCompositeFieldContainer[TimelineEntry]
    worker: str
    def __init__(self, study_instance_uid: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., step: _Optional[str] = ..., instances: _Optional[int] = ..., series: _Optional[int] = ..., new_instances: _Optional[int] = ..., calling_ae_title: _Optional[str] = ..., calling_host: _Optional[str] = ..., attempts: _Optional[int] = ..., error: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_arrival: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details_json: _Optional[str] = ..., timeline: _Optional[_Iterable[_Union[TimelineEntry, _Mapping]]] = ..., worker: _Optional[str] = ...) -> None: ...

class TimelineEntry(_message.Message):
    __slots__ = ("state", "step", "time", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    step: str
    time: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., step: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("serving", "components")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    components: _containers.RepeatedCompositeFieldContainer[Component]
    def __init__(self, serving: _Optional[bool] = ..., components: _Optional[_Iterable[_Union[Component, _Mapping]]] = ...) -> None: ...

class Component(_message.Message):
    __slots__ = ("name", "ok", "detail", "critical")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    critical: bool
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ..., critical: _Optional[bool] = ...) -> None: ...
