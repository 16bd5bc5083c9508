"""Outbox and delivery by C-STORE to a real dcmtk storescp, with retries and resend."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.helpers.dicom_peers import STORESCP, free_port, run_storescp, wait_for_port
from tests.helpers.synthetic import mr_instance
from tumorlens.cli import main
from tumorlens.config import Destination, load_settings
from tumorlens.errors import DeliveryError
from tumorlens.sender.deliver import RetryPolicy, deliver, resolve_destinations
from tumorlens.sender.outbox import Outbox, OutboxBatch

STUDY = "1.2.826.0.1.3680043.10.7.1"


@pytest.fixture
def batch(tmp_path: Path) -> OutboxBatch:
    objects = [("SC", mr_instance(STUDY, STUDY + ".9", i)) for i in range(3)]
    return Outbox(tmp_path / "outbox").write(STUDY, 2, objects)


def test_outbox_round_trip_keeps_what_was_delivered(tmp_path: Path, batch: OutboxBatch) -> None:
    assert [p.path.exists() for p in batch.objects] == [True] * 3
    batch.mark_delivered("PACS@h:1", [batch.objects[0].sop_instance_uid])
    loaded = Outbox(tmp_path / "outbox").load(STUDY)
    assert loaded.version == 2
    assert [o.sop_instance_uid for o in loaded.pending("PACS@h:1")] == [
        o.sop_instance_uid for o in batch.objects[1:]
    ]
    assert list((tmp_path / "outbox").rglob("*.part")) == []


def test_delivery_to_a_real_scp(tmp_path: Path, batch: OutboxBatch) -> None:
    with run_storescp(tmp_path / "scp") as scp:
        destination = Destination(scp.ae_title, scp.host, scp.port)
        report = deliver(batch, [destination], "TUMORLENS")
        received = {pydicom.dcmread(p).SOPInstanceUID for p in scp.received()}
    assert report.sent == {str(destination): 3}
    assert received == {o.sop_instance_uid for o in batch.objects}
    # a second call sends nothing again
    assert deliver(batch, [destination], "TUMORLENS").sent == {str(destination): 0}


@pytest.fixture
def late_scp(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    started: list[subprocess.Popen[bytes]] = []
    yield port, started
    for process in started:
        process.terminate()
        process.wait()


def test_a_destination_that_comes_back_gets_everything_on_retry(
    tmp_path: Path,
    batch: OutboxBatch,
    late_scp: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    port, started = late_scp
    out = tmp_path / "late"
    out.mkdir()

    def start_scp_then_wait(seconds: float) -> None:
        # The PACS comes back during the first backoff.
        if not started:
            started.append(
                subprocess.Popen(
                    [str(STORESCP), "-aet", "LATE", "-od", str(out), str(port)],
                    env={**os.environ, "TCP_NODELAY": "1"},
                )
            )
            wait_for_port(port)

    destination = Destination("LATE", "127.0.0.1", port)
    report = deliver(
        batch, [destination], "TUMORLENS", RetryPolicy(attempts=3), start_scp_then_wait
    )
    assert report.attempts == {str(destination): 2}
    assert len(list(out.iterdir())) == 3


def test_undeliverable_results_raise_and_stay_in_the_outbox(batch: OutboxBatch) -> None:
    waits: list[float] = []
    destination = Destination("NOBODY", "127.0.0.1", free_port())
    with pytest.raises(DeliveryError, match=r"NOBODY@127\.0\.0\.1") as caught:
        deliver(batch, [destination], "TUMORLENS", RetryPolicy(attempts=3), waits.append)
    assert "3 of 3 not delivered" in str(caught.value)
    assert waits == [2.0, 4.0]  # backoff doubles
    assert all(o.path.exists() for o in batch.objects)


def test_results_go_back_to_the_sender_by_default() -> None:
    settings = load_settings(environ={"TUMORLENS_PEERS": "ORTHANC@pacs:4242,OTHER@x:104"})
    assert resolve_destinations(settings, "ORTHANC") == (Destination("ORTHANC", "pacs", 4242),)
    with pytest.raises(DeliveryError, match="'UNKNOWN'"):
        resolve_destinations(settings, "UNKNOWN")
    configured = load_settings(environ={"TUMORLENS_DESTINATIONS": "VNA@vna:104"})
    assert resolve_destinations(configured, "ORTHANC") == (Destination("VNA", "vna", 104),)


def test_resend_command(
    tmp_path: Path, batch: OutboxBatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_storescp(tmp_path / "scp") as scp:
        to = f"{scp.ae_title}@{scp.host}:{scp.port}"
        code = main(["resend", STUDY, "--data-dir", str(tmp_path), "--to", to])
        assert code == 0
        assert len(scp.received()) == 3
    assert f"{to}: 3 object(s) sent" in capsys.readouterr().out
    assert main(["resend", "1.2.3.4", "--data-dir", str(tmp_path), "--to", to]) == 2


def test_resend_goes_back_to_the_sender_through_peers(tmp_path: Path) -> None:
    """Without --to or 'destinations', resend uses the calling AE the outbox recorded."""
    objects = [("SC", mr_instance(STUDY, STUDY + ".9", i)) for i in range(2)]
    Outbox(tmp_path / "outbox").write(STUDY, 1, objects, calling_aet="PACS1")
    with run_storescp(tmp_path / "scp", "PACS1") as scp:
        os.environ["TUMORLENS_PEERS"] = f"PACS1@{scp.host}:{scp.port}"
        try:
            assert main(["resend", STUDY, "--data-dir", str(tmp_path)]) == 0
        finally:
            del os.environ["TUMORLENS_PEERS"]
        assert len(scp.received()) == 2
    # Unknown sender, no destinations: a clear refusal (exit 2), nothing sent.
    Outbox(tmp_path / "outbox").write(STUDY, 1, objects, calling_aet="OTHER")
    assert main(["resend", STUDY, "--data-dir", str(tmp_path)]) == 2


def test_a_new_write_starts_a_new_delivery(tmp_path: Path, batch: OutboxBatch) -> None:
    """A re-run re-writes the same objects (deterministic UIDs): all are sent again."""
    batch.mark_delivered("PACS@h:1", [o.sop_instance_uid for o in batch.objects])
    objects = [("SC", mr_instance(STUDY, STUDY + ".9", i)) for i in range(3)]
    again = Outbox(tmp_path / "outbox").write(STUDY, 2, objects)
    assert len(again.pending("PACS@h:1")) == 3
