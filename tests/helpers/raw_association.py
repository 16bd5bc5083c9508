"""A-ASSOCIATE on a raw socket: the listener's answer read straight off the wire.

Why not pynetdicom's ``assoc.is_rejected``: when the acceptor answers A-ASSOCIATE-RJ at once,
pynetdicom's reactor thread can take the RJ and close its socket (AE-4) before the requesting
thread checks the socket is connected; that thread then reads "failed to connect" and aborts,
so ``is_rejected`` stays False although the RJ arrived (seen once on a loaded machine).
"""

from __future__ import annotations

import socket
import struct

from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

A_ASSOCIATE_AC_TYPE = 0x02
A_ASSOCIATE_RJ_TYPE = 0x03


def associate_rq(called: str = "TUMORLENS", calling: str = "RAWPEER") -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing MR Image Storage and Verification."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID("1.2.840.10008.3.1.1.1")
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    contexts = [build_context(MRImageStorage, ExplicitVRLittleEndian), build_context(Verification)]
    for i, cx in enumerate(contexts):
        cx.context_id = 2 * i + 1
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def answer(port: int, called: str = "TUMORLENS", calling: str = "RAWPEER") -> tuple[int, bytes]:
    """Send one A-ASSOCIATE-RQ; return the type and body of the PDU that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(associate_rq(called, calling))
        pdu_type, _, length = struct.unpack(">BBL", _recv_exactly(sock, 6))
        return pdu_type, _recv_exactly(sock, length)


def rejection(
    port: int, called: str = "TUMORLENS", calling: str = "RAWPEER"
) -> tuple[int, int, int]:
    """(result, source, reason/diag.) of the A-ASSOCIATE-RJ the listener answers (PS3.8
    9.3.4); AssertionError when it answers anything else."""
    pdu_type, body = answer(port, called, calling)
    assert pdu_type == A_ASSOCIATE_RJ_TYPE, f"expected A-ASSOCIATE-RJ, got PDU type {pdu_type:#04x}"
    return body[1], body[2], body[3]
