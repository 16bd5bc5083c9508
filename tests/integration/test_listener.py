"""The Storage SCP in-process against a real Redis, driven by a pynetdicom SCU.

Bad input cases follow the issue: unknown AE titles, traversal and over-long UIDs, undecodable,
truncated and huge-length data sets, a full disk, an aborted association, foreign hosts, TLS.
"""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from tests.helpers.raw_association import rejection
from tests.helpers.synthetic import mr_instance
from tumorlens import errors
from tumorlens.assembler.assembler import Assembler
from tumorlens.config import Settings, load_settings
from tumorlens.listener.receiver import InstanceReceiver
from tumorlens.listener.scp import Listener
from tumorlens.listener.spool import Spool
from tumorlens.store.jobs import JobRef, JobStore
from tumorlens.store.states import JobState

STUDY = "1.2.826.0.1.3680043.10.1.1"
SERIES = "1.2.826.0.1.3680043.10.1.1.1"


@dataclass
class Running:
    listener: Listener
    settings: Settings
    jobs: JobStore
    spool_dir: Path

    @property
    def port(self) -> int:
        return self.listener.port


def start_listener(tmp_path: Path, jobs: JobStore, **overrides: object) -> Running:
    options: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "dicom_host": "127.0.0.1",
        "dicom_port": 0,
        "disk_reserve_mb": 0,
    }
    options.update(overrides)
    settings = load_settings(environ={}, **options)
    spool = Spool(settings.spool_dir, settings.disk_reserve_mb * 2**20)
    listener = Listener(settings, InstanceReceiver(spool, jobs))
    listener.start()
    return Running(listener, settings, jobs, settings.spool_dir)


@pytest.fixture
def scp(tmp_path: Path, jobs: JobStore) -> Iterator[Running]:
    running = start_listener(tmp_path, jobs, allowed_calling_aets=("TESTSCU",))
    yield running
    running.listener.stop(drain_timeout=2)


def associate(
    port: int, calling: str = "TESTSCU", tls: ssl.SSLContext | None = None
) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    tls_args = (tls, "127.0.0.1") if tls is not None else None
    return ae.associate("127.0.0.1", port, ae_title="TUMORLENS", tls_args=tls_args)


def instance(index: int, **changes: str) -> Dataset:
    ds = mr_instance(STUDY, SERIES, index)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_echo_and_store(scp: Running) -> None:
    assoc = associate(scp.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == errors.SUCCESS
    for i in range(3):
        assert assoc.send_c_store(instance(i)).Status == errors.SUCCESS
    assoc.release()
    files = sorted((scp.spool_dir / STUDY / SERIES).glob("*.dcm"))
    assert len(files) == 3
    assert files[0].read_bytes()[:132] == b"\0" * 128 + b"DICM"
    job = scp.jobs.get(STUDY)
    assert (job.instances, job.series, job.calling_aet, job.state) == (
        3,
        1,
        "TESTSCU",
        JobState.RECEIVING,
    )


def test_unknown_calling_ae_title_is_rejected(scp: Running) -> None:
    # rejected-permanent, DICOM UL service-user, calling AE title not recognised (PS3.8 9.3.4)
    assert rejection(scp.port, calling="INTRUDER") == (1, 1, 3)
    assert all_files(scp.spool_dir) == []


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("StudyInstanceUID", "../../../../tmp/evil"),
        ("SeriesInstanceUID", "1.2/../../x"),
        ("StudyInstanceUID", "1." + "2" * 63),
        ("SeriesInstanceUID", ""),
    ],
)
def test_bad_uids_are_refused_and_nothing_written(
    scp: Running, tmp_path: Path, attribute: str, value: str
) -> None:
    before = set(all_files(tmp_path))
    assoc = associate(scp.port)
    status = assoc.send_c_store(instance(0, **{attribute: value})).Status
    # the association keeps serving the next, good instance
    assert assoc.send_c_store(instance(1)).Status == errors.SUCCESS
    assoc.release()
    assert 0xC000 <= status <= 0xCFFF
    new_files = set(all_files(tmp_path)) - before
    assert len(new_files) == 1  # only the good instance (redis files are outside tmp/data/spool)
    assert all(scp.spool_dir in p.parents for p in new_files)


def write_raw(path: Path, body: bytes, sop_uid: str = "1.2.3.4.5") -> Path:
    """A file meta header followed by whatever body bytes the test needs."""
    meta = Dataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1.99"
    with path.open("wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, meta, enforce_standard=True)  # type: ignore[arg-type]
        fh.write(body)
    return path


def encoded_body(ds: Dataset) -> bytes:
    from pynetdicom.dsutils import encode

    data = encode(ds, False, True)
    assert data is not None
    return data


def test_sop_instance_uid_must_match_the_request(
    scp: Running, tmp_path: Path, raw_sending: None
) -> None:
    body = encoded_body(instance(0))
    path = write_raw(tmp_path / "mismatch.dcm", body, sop_uid="1.2.3.999")
    assoc = associate(scp.port)
    assert assoc.send_c_store(path).Status == errors.CANNOT_UNDERSTAND_UID_MISMATCH
    assoc.release()
    assert list(scp.spool_dir.rglob("*.dcm")) == []


@pytest.fixture
def raw_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    # Send files byte for byte (pynetdicom does not re-encode them), like a broken modality.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def test_malformed_data_sets_get_cannot_understand(
    scp: Running, tmp_path: Path, raw_sending: None
) -> None:
    good = instance(0)
    body = encoded_body(good)
    pixel_at = body.find(b"\xe0\x7f\x10\x00")
    cases = {
        "truncated": body[: len(body) - 1000],
        "huge-length": body[: pixel_at + 8] + b"\xf0\xff\xff\xff" + body[pixel_at + 12 :],
        "garbage": bytes(range(256)) * 40,
        "no-pixels": body[:pixel_at],
    }
    statuses = {}
    assoc = associate(scp.port)
    for name, data in cases.items():
        path = write_raw(tmp_path / f"{name}.dcm", data, sop_uid=str(good.SOPInstanceUID))
        statuses[name] = assoc.send_c_store(path).Status
    # and the same association still stores a well-formed instance afterwards
    ok_path = write_raw(tmp_path / "ok.dcm", body, sop_uid=str(good.SOPInstanceUID))
    assert assoc.send_c_store(ok_path).Status == errors.SUCCESS
    assoc.release()
    assert statuses == {
        "truncated": errors.CANNOT_UNDERSTAND_UNDECODABLE,
        "huge-length": errors.CANNOT_UNDERSTAND_UNDECODABLE,
        "garbage": errors.CANNOT_UNDERSTAND_UNDECODABLE,
        "no-pixels": errors.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE,
    }
    assert len(list(scp.spool_dir.rglob("*.dcm"))) == 1
    assert list((scp.spool_dir / ".incoming").iterdir()) == []


def test_disk_nearly_full_answers_out_of_resources(tmp_path: Path, jobs: JobStore) -> None:
    running = start_listener(tmp_path, jobs, disk_reserve_mb=2**40)
    try:
        assoc = associate(running.port)
        assert assoc.send_c_store(instance(0)).Status == errors.REFUSED_OUT_OF_RESOURCES
        assoc.release()
    finally:
        running.listener.stop(drain_timeout=2)
    assert list(running.spool_dir.rglob("*.dcm")) == []
    assert list((running.spool_dir / ".incoming").iterdir()) == []


def test_aborted_association_keeps_what_was_acknowledged(scp: Running) -> None:
    assoc = associate(scp.port)
    for i in range(5):
        assert assoc.send_c_store(instance(i)).Status == errors.SUCCESS
    assoc.abort()
    assert len(list(scp.spool_dir.rglob("*.dcm"))) == 5
    dispatched: list[JobRef] = []
    assembler = Assembler(scp.jobs, dispatched.append, stable_age=0.5)
    time.sleep(0.6)
    assembler.tick()
    assert dispatched == [JobRef(STUDY, 1)]
    job = scp.jobs.get(STUDY)
    assert (job.state, job.instances) == (JobState.QUEUED, 5)


def test_foreign_host_is_refused(tmp_path: Path, jobs: JobStore) -> None:
    running = start_listener(tmp_path, jobs, allowed_hosts=("10.9.8.0/24",))
    try:
        assoc = associate(running.port)
        assert not assoc.is_established
    finally:
        running.listener.stop(drain_timeout=2)
    allowed = start_listener(tmp_path, jobs, allowed_hosts=("127.0.0.0/8",))
    try:
        assoc = associate(allowed.port)
        assert assoc.is_established
        assoc.release()
    finally:
        allowed.listener.stop(drain_timeout=2)


def test_association_limit(tmp_path: Path, jobs: JobStore) -> None:
    running = start_listener(tmp_path, jobs, max_associations=1)
    try:
        first = associate(running.port)
        assert first.is_established
        # rejected-transient, service-provider (presentation), local limit exceeded
        assert rejection(running.port, calling="TESTSCU") == (2, 3, 2)
        first.release()
    finally:
        running.listener.stop(drain_timeout=2)


def make_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_with_client_certificates(tmp_path: Path, jobs: JobStore) -> None:
    server_cert, server_key = make_certificate(tmp_path, "server")
    client_cert, client_key = make_certificate(tmp_path, "client")
    running = start_listener(
        tmp_path, jobs, tls_cert=server_cert, tls_key=server_key, tls_ca=client_cert
    )
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
        context.load_cert_chain(client_cert, client_key)
        assoc = associate(running.port, tls=context)
        assert assoc.is_established
        assert assoc.send_c_store(instance(0)).Status == errors.SUCCESS
        assoc.release()
        # without a client certificate the handshake fails
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
        assert not associate(running.port, tls=anonymous).is_established
        # and plain TCP gets nothing either
        assert not associate(running.port).is_established
    finally:
        running.listener.stop(drain_timeout=2)
    assert len(list(running.spool_dir.rglob("*.dcm"))) == 1


@pytest.mark.parametrize(
    "syntax",
    [
        "1.2.840.10008.1.2.5",  # RLE Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
    ],
)
def test_compressed_and_other_transfer_syntaxes_are_stored_as_sent(
    scp: Running, syntax: str
) -> None:
    import pydicom
    from pydicom.uid import UID

    transfer_syntax = UID(syntax)
    ds = instance(0)
    if transfer_syntax.is_compressed:
        ds.compress(transfer_syntax)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MRImageStorage, transfer_syntax)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TUMORLENS")
    assert assoc.is_established
    # pynetdicom encodes the data set in the syntax its file meta names.
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    assert assoc.send_c_store(ds).Status == errors.SUCCESS
    assoc.release()
    (stored,) = scp.spool_dir.rglob("*.dcm")
    back = pydicom.dcmread(stored)
    assert back.file_meta.TransferSyntaxUID == transfer_syntax
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    original = mr_instance(STUDY, SERIES, 0).pixel_array
    assert (back.pixel_array == original).all()  # lossless all the way
