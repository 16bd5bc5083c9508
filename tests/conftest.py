"""Shared fixtures: real peers (Redis, tumorlens serve) on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dicom_peers import StoreSCP, run_storescp
from tests.helpers.service import ServeProcess
from tests.helpers.studies import tcga_study
from tumorlens.dicomio.make_study import WrittenStudy
from tumorlens.store.embedded_redis import EmbeddedRedis
from tumorlens.store.jobs import JobStore

REPO = Path(__file__).resolve().parent.parent
RESULTS_AET = "RESULTS"


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
def results_scp(tmp_path: Path) -> Iterator[StoreSCP]:
    """dcmtk storescp standing in for the PACS that receives the results (SEG, SR, PDF)."""
    with run_storescp(tmp_path / "results", RESULTS_AET) as scp:
        yield scp


@pytest.fixture
def serve(tmp_path: Path, results_scp: StoreSCP) -> Iterator[ServeProcess]:
    """``tumorlens serve`` (not started) that sends results to ``results_scp``; tests may
    start and restart it with other settings."""
    process = ServeProcess(
        tmp_path / "data", destinations=f"{RESULTS_AET}@127.0.0.1:{results_scp.port}"
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def tcga_dicom(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """The real case TCGA-FG-6692 as a DICOM MR study (4 series x 26 slices)."""
    case = shared_data / "cases" / "TCGA-FG-6692"
    if not (case / "t1.nii.gz").exists():
        pytest.skip(f"case TCGA-FG-6692 not found under {shared_data}")
    return tcga_study(case, tmp_path_factory.mktemp("tcga-dicom"), seed=6692)
