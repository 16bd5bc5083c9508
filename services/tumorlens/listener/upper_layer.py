"""A lean DICOM Upper Layer acceptor (PS3.8) for the Storage and Verification services.

Why not pynetdicom's own acceptor: it runs two threads per association that poll each other
with millisecond sleeps, which costs more per instance than the durable write itself. Here each
association is one thread doing blocking reads: read a PDU, act, answer. The codecs are
still pynetdicom's and pydicom's (A-ASSOCIATE PDUs, presentation context negotiation, data set
decoding); only the event loop is ours, and it knows exactly the messages a Storage SCP needs:

- A-ASSOCIATE-RQ -> AC or RJ (PS3.8 9.3.2-9.3.4), checked against AE titles and the
  association limit; presentation contexts negotiated by pynetdicom;
- P-DATA-TF (9.3.5) carrying C-STORE-RQ and C-ECHO-RQ (PS3.7 9.3.1, 9.3.5); any other
  DIMSE service is answered "unrecognised operation" (0x0211);
- A-RELEASE-RQ -> RP; A-ABORT; anything unexpected -> A-ABORT (PS3.8 9.3.8).

Every read has a deadline (ACSE timeout before the association, network timeout after) and
every PDU a size cap, so a silent or hostile peer costs a thread for a bounded time only.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Final

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from tumorlens.errors import SUCCESS, TumorlensError, UndecodableDatasetError, dimse_status_for
from tumorlens.identifiers import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tumorlens.listener.integrity import check_complete

log = logging.getLogger(__name__)

APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"
VERIFICATION: Final = "1.2.840.10008.1.1"

# PDU types (PS3.8 Table 9-11)
A_ASSOCIATE_RQ_TYPE: Final = 0x01
P_DATA_TF_TYPE: Final = 0x04
A_RELEASE_RQ_TYPE: Final = 0x05
A_RELEASE_RP_TYPE: Final = 0x06
A_ABORT_TYPE: Final = 0x07
# A-ASSOCIATE-RQ holds titles, contexts and user items: 64 KiB is generous (128 contexts
# with a dozen transfer syntaxes each is about 20 KiB).
MAX_ASSOCIATE_RQ: Final = 65536

# DIMSE command fields (PS3.7 Annex E)
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
NO_DATA_SET: Final = 0x0101
UNRECOGNISED_OPERATION: Final = 0x0211

# A-ASSOCIATE-RJ (result, source, reason) - PS3.8 9.3.4
RJ_CALLING_AE_NOT_RECOGNISED: Final = (0x01, 0x01, 0x03)
RJ_CALLED_AE_NOT_RECOGNISED: Final = (0x01, 0x01, 0x07)
RJ_APPLICATION_CONTEXT_NOT_SUPPORTED: Final = (0x01, 0x01, 0x02)
RJ_LOCAL_LIMIT_EXCEEDED: Final = (0x02, 0x03, 0x02)
# A-ABORT (source, reason) - PS3.8 9.3.8
ABORT_UNEXPECTED_PDU: Final = (0x02, 0x02)
ABORT_UNRECOGNISED_PDU: Final = (0x02, 0x01)
ABORT_INVALID_PARAMETER: Final = (0x02, 0x06)


class AssociationAborted(Exception):
    """The peer went away or broke the protocol; the association is over."""


@dataclass(frozen=True)
class StoreIndication:
    """A complete C-STORE-RQ, as handed to the storage handler."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: UID
    data_set: bytes
    calling_aet: str
    calling_host: str


StoreHandler = Callable[[StoreIndication], tuple[int, str]]


@dataclass(frozen=True)
class AcceptorPolicy:
    """Who may associate, and the limits of an association."""

    ae_title: str
    allowed_calling_aets: tuple[str, ...]
    max_pdu_size: int
    max_associations: int
    acse_timeout: float
    network_timeout: float  # idle time allowed between messages
    dimse_timeout: float  # time allowed between the fragments of one message
    supported: tuple[PresentationContext, ...] = field(default=())


# --- byte-level helpers ---------------------------------------------------------------------
def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            raise AssociationAborted("connection closed by peer")
        chunks += chunk
    return bytes(chunks)


def read_pdu(sock: socket.socket, max_length: int) -> tuple[int, bytes]:
    """One PDU: (type, body). A PDU longer than ``max_length`` aborts the association."""
    header = _recv_exactly(sock, 6)
    pdu_type, _, length = struct.unpack(">BBL", header)
    if length > max_length:
        raise AssociationAborted(f"PDU of {length} bytes exceeds the limit of {max_length}")
    return pdu_type, _recv_exactly(sock, length)


def _element(tag: int, vr_value: bytes) -> bytes:
    """An Implicit VR Little Endian element (command sets are always encoded so, PS3.7 6.3.1)."""
    if len(vr_value) % 2:
        vr_value += b"\0"
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(vr_value)) + vr_value


def encode_response(
    command_field: int,
    message_id: int,
    *,
    sop_class_uid: str,
    status: int,
    sop_instance_uid: str | None = None,
    error_comment: str = "",
) -> bytes:
    """A C-STORE-RSP / C-ECHO-RSP command set (PS3.7 9.3.1.2, 9.3.5.2)."""
    body = _element(0x00000002, sop_class_uid.encode())
    body += _element(0x00000100, struct.pack("<H", command_field))
    body += _element(0x00000120, struct.pack("<H", message_id))
    body += _element(0x00000800, struct.pack("<H", NO_DATA_SET))
    body += _element(0x00000900, struct.pack("<H", status))
    if error_comment:
        # Error Comment (LO, 64 chars max): tells the sender's log why.
        body += _element(0x00000902, error_comment[:64].encode("ascii", "replace"))
    if sop_instance_uid is not None:
        body += _element(0x00001000, sop_instance_uid.encode())
    return _element(0x00000000, struct.pack("<L", len(body))) + body


def p_data_tf(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF with one PDV holding a whole command (message control header 0x03)."""
    pdv = struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBL", P_DATA_TF_TYPE, 0, len(pdv)) + pdv


def a_abort(source: int, reason: int) -> bytes:
    return struct.pack(">BBLBBBB", A_ABORT_TYPE, 0, 4, 0, 0, source, reason)


A_RELEASE_RP: Final = struct.pack(">BBLL", A_RELEASE_RP_TYPE, 0, 4, 0)


def _decode_command(data: bytes) -> Dataset:
    try:
        command: Dataset = read_dataset(BytesIO(data), True, True)
        _ = command.CommandField, command.MessageID
    except Exception as exc:  # pydicom raises many types for garbage
        raise AssociationAborted(f"undecodable DIMSE command set: {exc}") from exc
    return command


# --- one association ----------------------------------------------------------------------
class Association:
    """Serves one association on a connected socket until release, abort or timeout."""

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int],
        policy: AcceptorPolicy,
        on_store: StoreHandler,
        active: Callable[[], int],
    ) -> None:
        self.sock = sock
        self.peer_host = peer[0]
        self.policy = policy
        self.on_store = on_store
        self.active = active
        self.calling_aet = ""
        self.contexts: dict[int, PresentationContext] = {}
        self.peer_max_pdu = 0

    def run(self) -> None:
        try:
            if self._associate():
                self._serve()
        except AssociationAborted as exc:
            log.info("association with %s@%s ended: %s", self.calling_aet, self.peer_host, exc)
        except TimeoutError:
            log.warning("association with %s@%s timed out", self.calling_aet, self.peer_host)
            self._send_quietly(a_abort(*ABORT_UNEXPECTED_PDU))
        except (OSError, ssl.SSLError) as exc:
            log.info("connection from %s lost: %s", self.peer_host, exc)

    def close(self) -> None:
        """Abort from another thread (shutdown): the blocked read fails and run() returns."""
        self._send_quietly(a_abort(0x02, 0x00))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    # A-ASSOCIATE (PS3.8 9.3.2)
    def _associate(self) -> bool:
        self.sock.settimeout(self.policy.acse_timeout)
        pdu_type, body = read_pdu(self.sock, MAX_ASSOCIATE_RQ)
        if pdu_type != A_ASSOCIATE_RQ_TYPE:
            self._send_quietly(a_abort(*ABORT_UNEXPECTED_PDU))
            raise AssociationAborted(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(struct.pack(">BBL", pdu_type, 0, len(body)) + body)
            request = pdu.to_primitive()
        except Exception as exc:  # malformed items: pynetdicom raises several types
            self._send_quietly(a_abort(*ABORT_INVALID_PARAMETER))
            raise AssociationAborted(f"malformed A-ASSOCIATE-RQ: {exc}") from exc
        self.calling_aet = str(request.calling_ae_title).strip()
        rejection = self._rejection(request)
        if rejection is not None:
            self._reject(request, rejection)
            return False
        self._accept(request)
        return True

    def _rejection(self, request: A_ASSOCIATE) -> tuple[int, int, int] | None:
        policy = self.policy
        if str(request.application_context_name) != APPLICATION_CONTEXT_NAME:
            return RJ_APPLICATION_CONTEXT_NOT_SUPPORTED
        if str(request.called_ae_title).strip() != policy.ae_title:
            return RJ_CALLED_AE_NOT_RECOGNISED
        if policy.allowed_calling_aets and self.calling_aet not in policy.allowed_calling_aets:
            return RJ_CALLING_AE_NOT_RECOGNISED
        if self.active() > policy.max_associations:
            return RJ_LOCAL_LIMIT_EXCEEDED
        return None

    def _reject(self, request: A_ASSOCIATE, rsd: tuple[int, int, int]) -> None:
        primitive = A_ASSOCIATE()
        primitive.result, primitive.result_source, primitive.diagnostic = rsd
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(primitive)
        self._send_quietly(pdu.encode())
        log.warning(
            "association from %s@%s (called %s) rejected: %s",
            self.calling_aet,
            self.peer_host,
            str(request.called_ae_title).strip(),
            _REJECT_REASONS.get(rsd, rsd),
        )

    def _accept(self, request: A_ASSOCIATE) -> None:
        roles: dict[UID, tuple[bool | None, bool | None]] = {}
        for item in request.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
                roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
        results, role_items = negotiate_as_acceptor(
            request.presentation_context_definition_list,
            list(self.policy.supported),
            roles or None,
        )
        self.contexts = {
            int(cx.context_id): cx for cx in results if cx.result == 0 and cx.context_id
        }
        primitive = A_ASSOCIATE()
        primitive.application_context_name = UID(APPLICATION_CONTEXT_NAME)
        primitive.calling_ae_title = request.calling_ae_title
        primitive.called_ae_title = request.called_ae_title
        primitive.result = 0x00
        primitive.result_source = 0x01
        primitive.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.policy.max_pdu_size
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        primitive.user_information = [max_length, class_uid, version, *role_items]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(primitive)
        self.sock.sendall(pdu.encode())
        log.info(
            "association from %s@%s accepted (%d of %d presentation contexts)",
            self.calling_aet,
            self.peer_host,
            len(self.contexts),
            len(results),
        )

    # Data transfer (PS3.8 9.3.5) until release or abort
    def _serve(self) -> None:
        # P-DATA-TF variable field <= our Maximum Length; 0 means unlimited (PS3.8 D.1).
        limit = self.policy.max_pdu_size or 0xFFFFFFFF
        command = bytearray()
        data_set = bytearray()
        pending: Dataset | None = None
        context_id = 0
        while True:
            # A message under way must keep coming (DIMSE timeout); between messages the
            # peer may idle for the network timeout before we close the association.
            in_message = pending is not None or bool(command)
            self.sock.settimeout(
                self.policy.dimse_timeout if in_message else self.policy.network_timeout
            )
            pdu_type, body = read_pdu(self.sock, limit)
            if pdu_type == A_RELEASE_RQ_TYPE:
                self.sock.sendall(A_RELEASE_RP)
                log.info("association with %s@%s released", self.calling_aet, self.peer_host)
                return
            if pdu_type == A_ABORT_TYPE:
                raise AssociationAborted("aborted by peer")
            if pdu_type != P_DATA_TF_TYPE:
                self._send_quietly(a_abort(*ABORT_UNEXPECTED_PDU))
                raise AssociationAborted(f"unexpected PDU type 0x{pdu_type:02X}")
            view = memoryview(body)
            offset = 0
            while offset < len(view):
                if offset + 6 > len(view):
                    self._send_quietly(a_abort(*ABORT_INVALID_PARAMETER))
                    raise AssociationAborted("truncated PDV item")
                (item_length,) = struct.unpack_from(">L", view, offset)
                context_id, header = view[offset + 4], view[offset + 5]
                value = view[offset + 6 : offset + 4 + item_length]
                offset += 4 + item_length
                if item_length < 2 or offset > len(view) or context_id not in self.contexts:
                    self._send_quietly(a_abort(*ABORT_INVALID_PARAMETER))
                    raise AssociationAborted("invalid PDV item (length or context)")
                if header & 0x01:  # command fragment
                    command += value
                    if header & 0x02:
                        pending = _decode_command(bytes(command))
                        command.clear()
                        if int(pending.get("CommandDataSetType", NO_DATA_SET)) == NO_DATA_SET:
                            self._dispatch(pending, context_id, b"")
                            pending = None
                else:  # data set fragment
                    if pending is None:
                        self._send_quietly(a_abort(*ABORT_UNEXPECTED_PDU))
                        raise AssociationAborted("data set fragment without a command")
                    data_set += value
                    if header & 0x02:
                        self._dispatch(pending, context_id, bytes(data_set))
                        data_set.clear()
                        pending = None

    def _dispatch(self, command: Dataset, context_id: int, data_set: bytes) -> None:
        field_ = int(command.CommandField)
        message_id = int(command.MessageID)
        context = self.contexts[context_id]
        sop_class = str(command.get("AffectedSOPClassUID", context.abstract_syntax or ""))
        if field_ == C_ECHO_RQ:
            response = encode_response(
                C_ECHO_RSP, message_id, sop_class_uid=sop_class, status=SUCCESS
            )
        elif field_ == C_STORE_RQ:
            sop_instance = str(command.get("AffectedSOPInstanceUID", ""))
            status, comment = self.on_store(
                StoreIndication(
                    sop_class_uid=sop_class,
                    sop_instance_uid=sop_instance,
                    transfer_syntax=UID(str(context.transfer_syntax[0])),
                    data_set=data_set,
                    calling_aet=self.calling_aet,
                    calling_host=self.peer_host,
                )
            )
            response = encode_response(
                C_STORE_RSP,
                message_id,
                sop_class_uid=sop_class,
                status=status,
                sop_instance_uid=sop_instance[:64],
                error_comment=comment,
            )
        else:
            log.warning("DIMSE command 0x%04X from %s not supported", field_, self.calling_aet)
            response = encode_response(
                field_ | 0x8000,
                message_id,
                sop_class_uid=sop_class,
                status=UNRECOGNISED_OPERATION,
            )
        self.sock.sendall(p_data_tf(context_id, response))


_REJECT_REASONS: Final = {
    RJ_CALLING_AE_NOT_RECOGNISED: "calling AE title not recognised",
    RJ_CALLED_AE_NOT_RECOGNISED: "called AE title not recognised",
    RJ_APPLICATION_CONTEXT_NOT_SUPPORTED: "application context name not supported",
    RJ_LOCAL_LIMIT_EXCEEDED: "too many associations",
}


# --- from PDV bytes to what the receiver needs ------------------------------------------------
def decode_data_set(indication: StoreIndication) -> Dataset:
    """Decode a received data set completely, or raise :class:`UndecodableDatasetError`."""
    syntax = indication.transfer_syntax
    raw = indication.data_set
    try:
        if syntax == DeflatedExplicitVRLittleEndian:
            raw = zlib.decompress(raw, -zlib.MAX_WBITS)
        dataset: Dataset = read_dataset(
            BytesIO(raw), syntax == ImplicitVRLittleEndian, syntax.is_little_endian
        )
        check_complete(dataset, syntax)
    except TumorlensError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input
        raise UndecodableDatasetError(f"data set cannot be decoded: {exc}") from exc
    return dataset


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    """A short-form Explicit VR Little Endian element (PS3.5 7.1.2)."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, our_aet: str, sender: str
) -> bytes:
    """The File Meta Information group (PS3.10 7.1), encoded by hand: on the ingest hot path
    pydicom's general writer costs more than the rest of the handler's CPU work."""
    body = struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
    body += _explicit(0x00020002, b"UI", sop_class_uid.encode())
    body += _explicit(0x00020003, b"UI", sop_instance_uid.encode())
    body += _explicit(0x00020010, b"UI", transfer_syntax.encode())
    body += _explicit(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode())
    body += _explicit(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode())
    # Source = the AE that wrote the file (us); Sending = the peer it came from.
    body += _explicit(0x00020016, b"AE", our_aet.encode("ascii", "replace"))
    if sender:
        body += _explicit(0x00020017, b"AE", sender[:16].encode("ascii", "replace"))
    body += _explicit(0x00020018, b"AE", our_aet.encode("ascii", "replace"))
    return _explicit(0x00020000, b"UL", struct.pack("<L", len(body))) + body


def part10_bytes(indication: StoreIndication, our_aet: str) -> bytes:
    """The instance as a DICOM file: zeroed preamble, file meta, the data set as sent."""
    meta = file_meta_bytes(
        indication.sop_class_uid,
        indication.sop_instance_uid,
        str(indication.transfer_syntax),
        our_aet,
        indication.calling_aet,
    )
    return b"\0" * 128 + b"DICM" + meta + indication.data_set


def status_of(exc: BaseException) -> tuple[int, str]:
    return dimse_status_for(exc), str(exc)


class ConnectionCounter:
    """Thread-safe count of open associations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __enter__(self) -> ConnectionCounter:
        with self._lock:
            self._count += 1
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._count -= 1

    @property
    def value(self) -> int:
        return self._count
