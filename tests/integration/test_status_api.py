"""The status API over a real gRPC channel, against a real (embedded) Redis job store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from tumorlens import cli
from tumorlens.config import Settings
from tumorlens.errors import ConfigurationError
from tumorlens.identifiers import InstanceKey
from tumorlens.status.health import HealthProbe, default_probe
from tumorlens.status.server import StatusServer, start_status_server
from tumorlens.status.servicer import STATE_FROM_PROTO, STATE_TO_PROTO
from tumorlens.status.transport import is_local_address
from tumorlens.status.v1 import status_pb2 as pb
from tumorlens.status.v1 import status_pb2_grpc
from tumorlens.store.embedded_redis import EmbeddedRedis
from tumorlens.store.jobs import JobRef, JobStore
from tumorlens.store.states import JobState

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0  # fixed times make the timeline exact
FAILURE = "no usable series: no T1 post-contrast series found"


@dataclass
class Api:
    jobs: JobStore
    server: StatusServer
    stub: status_pb2_grpc.StudyStatusStub
    address: str


def _settings(root: Path) -> Settings:
    return Settings(data_dir=root / "data", models_dir=root / "models", disk_reserve_mb=1)


@contextmanager_fixture := None  # (placeholder removed below)
