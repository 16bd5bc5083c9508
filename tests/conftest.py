"""Shared fixtures: real peers (Redis, tumorlens serve) on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.service import ServeProcess
from tumorlens.store.embedded_redis import EmbeddedRedis
from tumorlens.store.jobs import JobStore

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    return Path(os.environ.get("TUMORLENS_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set TUMORLENS_DATA)")
    return root


@pytest.fixture
def tcga_case(shared_data: Path) -> Path:
    case = shared_data / "cases" / "TCGA-FG-6692"
    if not (case / "t1.nii.gz").exists():
        pytest.skip(f"case TCGA-FG-6692 not found under {shared_data}")
    return case


@pytest.fixture
def redis_store(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, JobStore]]:
    with EmbeddedRedis(tmp_path / "data") as server:
        yield server, JobStore.from_url(server.url)


@pytest.fixture
def jobs(redis_store: tuple[EmbeddedRedis, JobStore]) -> JobStore:
    return redis_store[1]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    """A started ``tumorlens serve``; tests may restart it with other settings."""
    process = ServeProcess(tmp_path / "data")
    yield process
    process.stop()
