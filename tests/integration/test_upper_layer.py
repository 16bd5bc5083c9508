"""A scripted, misbehaving DICOM peer on a raw socket against the listener (PS3.8 protocol).

Each case must end the bad association quickly (A-ABORT or close) and leave the listener
serving the next, well-behaved peer.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from tests.helpers.raw_association import A_ASSOCIATE_AC_TYPE, associate_rq, rejection
from tumorlens.config import load_settings
from tumorlens.listener.receiver import InstanceReceiver
from tumorlens.listener.scp import Listener
from tumorlens.listener.spool import Spool
from tumorlens.listener.upper_layer import (
    A_ABORT_TYPE,
    P_DATA_TF_TYPE,
    UNRECOGNISED_OPERATION,
    p_data_tf,
)
from tumorlens.store.jobs import JobStore


@pytest.fixture
def listener(tmp_path: Path, jobs: JobStore) -> Iterator[Listener]:
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        dicom_host="127.0.0.1",
        dicom_port=0,
        disk_reserve_mb=0,
        acse_timeout=1.0,
        network_timeout=2.0,
        max_pdu_size=16384,
    )
    running = Listener(settings, InstanceReceiver(Spool(settings.spool_dir), jobs))
    running.start()
    yield running
    running.stop(drain_timeout=1)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def read_pdu_type(sock: socket.socket) -> int | None:
    """The type of the next PDU, or None when the listener closed the connection."""
    try:
        header = sock.recv(6)
        if len(header) < 6:
            return None
        _, _, length = struct.unpack(">BBL", header)
        remaining = length
        while remaining:
            chunk = sock.recv(remaining)
            if not chunk:
                break
            remaining -= len(chunk)
        return header[0]
    except (ConnectionResetError, TimeoutError):
        return None


def still_serving(port: int) -> bool:
    ae = AE(ae_title="GOODPEER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TUMORLENS")
    ok = assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def element(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def command_set(field: int, message_id: int, data_set_type: int = 0x0101) -> bytes:
    """A request command set (Implicit VR LE, PS3.7 E.1) on the MR storage SOP Class."""
    body = element(0x00000002, str(MRImageStorage).encode())
    body += element(0x00000100, struct.pack("<H", field))
    body += element(0x00000110, struct.pack("<H", message_id))
    body += element(0x00000800, struct.pack("<H", data_set_type))
    if field == 0x0001:
        body += element(0x00001000, b"1.2.3.4.5.6")
    return element(0x00000000, struct.pack("<L", len(body))) + body


def established(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(associate_rq())
    assert read_pdu_type(sock) == A_ASSOCIATE_AC_TYPE
    return sock


@pytest.mark.parametrize(
    "opening",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF),  # huge declared A-ASSOCIATE-RQ length
        struct.pack(">BBL", P_DATA_TF_TYPE, 0, 4) + b"\0\0\0\0",  # data before association
        struct.pack(">BBL", 0x01, 0, 10) + b"\x00" * 10,  # truncated A-ASSOCIATE-RQ
    ],
)
def test_bad_openings_end_the_connection(listener: Listener, opening: bytes) -> None:
    sock = connect(listener.port)
    sock.sendall(opening)
    assert read_pdu_type(sock) in (A_ABORT_TYPE, None)
    sock.close()
    assert still_serving(listener.port)


def test_silent_peer_is_dropped_after_the_acse_timeout(listener: Listener) -> None:
    sock = connect(listener.port)
    started = time.monotonic()
    assert read_pdu_type(sock) in (A_ABORT_TYPE, None)
    assert time.monotonic() - started < 4
    sock.close()


def test_wrong_called_ae_title_is_rejected(listener: Listener) -> None:
    # rejected-permanent, DICOM UL service-user, called AE title not recognised (PS3.8 9.3.4)
    assert rejection(listener.port, called="SOMEONEELSE") == (1, 1, 7)
    assert still_serving(listener.port)


def test_pdv_for_an_unaccepted_context_aborts(listener: Listener) -> None:
    sock = established(listener.port)
    sock.sendall(p_data_tf(99, b"\0" * 8))
    assert read_pdu_type(sock) in (A_ABORT_TYPE, None)
    sock.close()
    assert still_serving(listener.port)


def test_pdu_larger_than_our_maximum_aborts(listener: Listener) -> None:
    sock = established(listener.port)
    sock.sendall(struct.pack(">BBL", P_DATA_TF_TYPE, 0, 100_000) + b"\0" * 100_000)
    assert read_pdu_type(sock) in (A_ABORT_TYPE, None)
    sock.close()


def test_unsupported_dimse_service_gets_unrecognised_operation(listener: Listener) -> None:
    sock = established(listener.port)
    # A C-FIND-RQ command (0x0020) with no data set, on the MR storage context.
    sock.sendall(p_data_tf(1, command_set(0x0020, 7)))
    header = sock.recv(6)
    assert header[0] == P_DATA_TF_TYPE
    body = sock.recv(struct.unpack(">L", header[2:])[0])
    status_at = body.find(struct.pack("<HH", 0x0000, 0x0900))
    assert struct.unpack_from("<H", body, status_at + 8)[0] == UNRECOGNISED_OPERATION
    sock.close()


def test_abort_in_the_middle_of_a_data_set_stores_nothing(
    listener: Listener, tmp_path: Path
) -> None:
    sock = established(listener.port)
    sock.sendall(p_data_tf(1, command_set(0x0001, 1, data_set_type=0x0000)))
    fragment = struct.pack(">LBB", 1002, 1, 0x00) + b"\0" * 1000  # not the last fragment
    sock.sendall(struct.pack(">BBL", P_DATA_TF_TYPE, 0, len(fragment)) + fragment)
    sock.sendall(struct.pack(">BBLBBBB", A_ABORT_TYPE, 0, 4, 0, 0, 0, 0))
    sock.close()
    time.sleep(0.3)
    assert list((tmp_path / "data" / "spool").rglob("*.dcm")) == []
    assert still_serving(listener.port)


def test_file_meta_is_what_pydicom_reads_back() -> None:
    from io import BytesIO

    import pydicom

    from tumorlens.identifiers import IMPLEMENTATION_CLASS_UID
    from tumorlens.listener.upper_layer import file_meta_bytes

    data = b"\0" * 128 + b"DICM"
    data += file_meta_bytes(str(MRImageStorage), "1.2.3.45", "1.2.840.10008.1.2.4.90", "TL", "PACS")
    meta = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).file_meta
    assert meta.MediaStorageSOPClassUID == MRImageStorage
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert (meta.SourceApplicationEntityTitle, meta.SendingApplicationEntityTitle) == ("TL", "PACS")
    assert meta.FileMetaInformationGroupLength == len(data) - 132 - 12
