"""The SCU against real peers: dcmtk storescp, and pynetdicom SCPs for odd answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, RLELossless
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.helpers.dicom_peers import STORESCP, StoreSCP, free_port, run_storescp
from tumorlens.cli import main
from tumorlens.dicomio.make_study import WrittenStudy, make_study
from tumorlens.errors import REFUSED_OUT_OF_RESOURCES, SUCCESS, DeliveryError
from tumorlens.sender.scu import (
    MAX_PRESENTATION_CONTEXTS,
    DicomFile,
    echo,
    find_dicom_files,
    presentation_contexts,
    push,
)

pytestmark = pytest.mark.integration
needs_storescp = pytest.mark.skipif(STORESCP is None, reason="storescp (dcmtk) is not installed")

# Storage warning "Coercion of Data Elements" (PS3.4 Table B.2-1).
COERCION_OF_DATA_ELEMENTS = 0xB000


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """Two small series (t1, flair) of 6 slices each, plus a stray non-DICOM file."""
    base = tmp_path_factory.mktemp("scu")
    volume = np.random.default_rng(3).integers(0, 1000, size=(32, 24, 6), dtype=np.int16)
    nifti = base / "volume.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([-1.0, 1.0, 4.0, 1.0])), str(nifti))
    written = make_study(
        {"t1": nifti, "flair": nifti}, base / "study", seed=11, study_datetime=datetime(2024, 1, 2)
    )
    (base / "study" / "README.txt").write_text("not DICOM\n")
    return written


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    if STORESCP is None:
        pytest.skip("storescp (dcmtk) is not installed")
    with run_storescp(tmp_path / "received") as peer:
        yield peer


def sop_instance_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@needs_storescp
def test_echo(storescp: StoreSCP) -> None:
    assert echo(storescp.host, storescp.port, storescp.ae_title) == SUCCESS


@needs_storescp
def test_push_delivers_every_instance(
    storescp: StoreSCP, study: WrittenStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    result = push(
        [study.out_dir], storescp.host, storescp.port, storescp.ae_title, "TESTSCU", progress=True
    )
    assert result.ok
    assert (result.sent, result.skipped, result.warnings) == (12, 1, ())
    assert result.elapsed > 0
    assert sop_instance_uids(storescp.received()) == sop_instance_uids(study.paths)
    assert "12/12" in capsys.readouterr().err  # the progress bar


@needs_storescp
def test_push_decompresses_when_the_syntax_is_refused(
    storescp: StoreSCP, study: WrittenStudy, tmp_path: Path
) -> None:
    # storescp accepts only uncompressed syntaxes by default, so RLE must fall back.
    original = pydicom.dcmread(study.paths[0])
    compressed = pydicom.dcmread(study.paths[0])
    compressed.compress(RLELossless)
    path = tmp_path / "rle.dcm"
    compressed.save_as(path, enforce_file_format=True)

    result = push([path], storescp.host, storescp.port, storescp.ae_title)

    assert (result.sent, result.failed) == (1, ())
    (received,) = storescp.received()
    ds = pydicom.dcmread(received)
    assert not UID(ds.file_meta.TransferSyntaxUID).is_compressed
    np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)


@needs_storescp
def test_cli_push_and_echo(
    storescp: StoreSCP, study: WrittenStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = ["--host", storescp.host, "--port", str(storescp.port)]
    peer += ["--called-aet", storescp.ae_title]
    assert main(["echo", *peer]) == 0
    assert main(["push", str(study.series[0].paths[0].parent), *peer, "--no-progress"]) == 0
    assert "sent 6, failed 0" in capsys.readouterr().out


def test_push_to_a_closed_port_raises() -> None:
    port = free_port()
    expected = re.escape(f"cannot connect to PACS@127.0.0.1:{port}")
    with pytest.raises(DeliveryError, match=expected):
        echo("127.0.0.1", port, "PACS", timeout=5)


def test_cli_reports_a_closed_port(study: WrittenStudy) -> None:
    args = ["push", str(study.out_dir), "--port", str(free_port()), "--no-progress"]
    assert main(args) == 2


@needs_storescp
def test_refused_association_raises(study: WrittenStudy, tmp_path: Path) -> None:
    with run_storescp(tmp_path / "received", extra_args=["--refuse", "-d"]) as peer:
        with pytest.raises(DeliveryError) as raised:
            push(study.paths, peer.host, peer.port, peer.ae_title)
        assert "rejected" in str(raised.value), peer.log.read_text()


class ScriptedSCP:
    """An in-process pynetdicom Storage SCP that answers with chosen statuses."""

    def __init__(self, statuses: dict[int, int]) -> None:
        self.statuses = statuses  # InstanceNumber -> status; others succeed
        self.received: list[str] = []
        self.ae = AE(ae_title="SCRIPTED")
        self.ae.require_called_aet = True
        self.ae.add_supported_context(MRImageStorage, ExplicitVRLittleEndian)
        self.ae.add_supported_context(Verification)
        self.port = free_port()

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        self.received.append(str(ds.SOPInstanceUID))
        status: int = self.statuses.get(int(ds.InstanceNumber), SUCCESS)
        return status

    def __enter__(self) -> ScriptedSCP:
        server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert server is not None
        self.server = server
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def test_statuses_are_classified(study: WrittenStudy) -> None:
    series = study.series[0]
    with ScriptedSCP({2: REFUSED_OUT_OF_RESOURCES, 3: COERCION_OF_DATA_ELEMENTS}) as scp:
        result = push(list(series.paths), "127.0.0.1", scp.port, "SCRIPTED")
    assert not result.ok
    assert result.sent == 5
    assert [(f.path.name, f.status) for f in result.failed] == [
        ("IM0002.dcm", REFUSED_OUT_OF_RESOURCES)
    ]
    assert "Out of Resources" in result.failed[0].reason
    assert [(w.path.name, w.status) for w in result.warnings] == [
        ("IM0003.dcm", COERCION_OF_DATA_ELEMENTS)
    ]
    assert len(scp.received) == 6


def test_wrong_called_aet_is_rejected(study: WrittenStudy) -> None:
    with (
        ScriptedSCP({}) as scp,
        pytest.raises(DeliveryError, match=r"rejected.*Called AE title not recognised"),
    ):
        push(study.paths, "127.0.0.1", scp.port, "NOT-SCRIPTED")


def test_unacceptable_sop_class_fails_per_file(study: WrittenStudy, tmp_path: Path) -> None:
    """A class the peer refuses is reported per file; the rest still go."""
    other = pydicom.dcmread(study.paths[0])
    secondary_capture = UID("1.2.840.10008.5.1.4.1.1.7")
    other.SOPClassUID = other.file_meta.MediaStorageSOPClassUID = secondary_capture
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    path = tmp_path / "sc.dcm"
    other.save_as(path, enforce_file_format=True)
    with ScriptedSCP({}) as scp:
        result = push([path, study.paths[1]], "127.0.0.1", scp.port, "SCRIPTED")
    assert result.sent == 1
    assert [f.path for f in result.failed] == [path]
    assert result.failed[0].status is None


def test_find_dicom_files_skips_others(study: WrittenStudy) -> None:
    found, skipped = find_dicom_files([study.out_dir])
    assert skipped == 1
    assert sorted(f.path for f in found) == sorted(study.paths)
    assert {f.sop_class_uid for f in found} == {MRImageStorage}


def test_contexts_cover_each_pair_found() -> None:
    def file(sop_class: str, syntax: str) -> DicomFile:
        return DicomFile(Path("x"), UID(sop_class), UID("1.2.3"), UID(syntax))

    ct = "1.2.840.10008.5.1.4.1.1.2"
    contexts = presentation_contexts(
        [
            file(MRImageStorage, ExplicitVRLittleEndian),
            file(MRImageStorage, RLELossless),
            file(MRImageStorage, ExplicitVRLittleEndian),
            file(ct, RLELossless),
        ]
    )
    offered = [(cx.abstract_syntax, tuple(cx.transfer_syntax)) for cx in contexts]
    uncompressed = (ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian)
    assert offered == [
        (MRImageStorage, uncompressed),
        (MRImageStorage, (RLELossless,)),
        (ct, uncompressed),
        (ct, (RLELossless,)),
    ]
    too_many = [file(f"1.2.3.{i}", ExplicitVRLittleEndian) for i in range(129)]
    with pytest.raises(DeliveryError, match=str(MAX_PRESENTATION_CONTEXTS)):
        presentation_contexts(too_many)
