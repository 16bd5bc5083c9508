"""DICOM SCU: C-ECHO a peer, and C-STORE files to it over one association.

Used by ``tumorlens echo``/``push`` and to deliver results back to a PACS. Presentation
contexts are proposed for the (SOP Class, Transfer Syntax) pairs found in the files only
(PS3.8 7.1.1.13), so any Storage SCP can accept them whatever SOP classes it knows.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import (
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)
from tqdm import tqdm

from tumorlens.errors import ConfigurationError, DeliveryError

LOG = logging.getLogger(__name__)

# By default the peer is this service's own listener (Settings.ae_title, dicom_port).
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 11112
DEFAULT_CALLED_AET: Final = "TUMORLENS"
DEFAULT_CALLING_AET: Final = "TUMORLENS"
# Same default as Settings.max_pdu_size: large PDUs cut per-PDU overhead on a LAN.
DEFAULT_MAX_PDU: Final = 262144
# Result of the A-ASSOCIATE response (PS3.8 7.1.1.7); 1 and 2 are rejections.
RESULT_ACCEPTED: Final = 0x00
# Presentation Context IDs are the odd numbers 1..255 (PS3.8 9.3.2.2).
MAX_PRESENTATION_CONTEXTS: Final = 128
# Every SCP supports the default transfer syntax (PS3.5 10.1), so offering it next to the
# files' own lets pynetdicom re-encode an uncompressed data set the peer would otherwise refuse.
FALLBACK_SYNTAXES: Final[tuple[UID, ...]] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class StoreOutcome(NamedTuple):
    """A file whose C-STORE did not end in plain success."""

    path: Path
    # The C-STORE response status (PS3.7 C), or None when no request could be sent.
    status: int | None
    reason: str


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` did. ``sent`` counts successes and warnings (stored either way)."""

    sent: int
    failed: tuple[StoreOutcome, ...]
    skipped: int
    warnings: tuple[StoreOutcome, ...]
    elapsed: float

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class DicomFile:
    """A DICOM Part 10 file found by :func:`find_dicom_files`."""

    path: Path
    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax_uid: UID


def _walk(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        elif path.is_file():
            yield path
        else:
            raise ConfigurationError(f"{path} is neither a file nor a directory")


def find_dicom_files(paths: Sequence[Path]) -> tuple[list[DicomFile], int]:
    """The DICOM files under ``paths`` (directories walked recursively), and how many others.

    Only headers are read. A file counts as DICOM when it has File Meta Information with a
    Transfer Syntax (PS3.10 7.1) and a SOP Class/Instance UID; DICOMDIRs have neither in the
    data set and are skipped too.
    """
    found: list[DicomFile] = []
    skipped = 0
    for path in _walk(paths):
        try:
            header = dcmread(path, stop_before_pixels=True)
            found.append(
                DicomFile(
                    path=path,
                    sop_class_uid=UID(header.SOPClassUID),
                    sop_instance_uid=UID(header.SOPInstanceUID),
                    transfer_syntax_uid=UID(header.file_meta.TransferSyntaxUID),
                )
            )
        except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError) as exc:
            LOG.debug("skipping %s: %s", path, exc)
            skipped += 1
    return found, skipped


def presentation_contexts(files: Sequence[DicomFile]) -> list[PresentationContext]:
    """Contexts covering every (SOP Class, Transfer Syntax) pair in ``files``.

    Per SOP class: one context per compressed syntax found (each needs its own, the SCP
    accepts at most one syntax per context, PS3.8 9.3.2.2), and one offering the
    uncompressed syntaxes found then the fallbacks, which also carries compressed files
    decompressed when their own syntax is refused.
    """
    per_class: dict[UID, list[UID]] = {}
    for f in files:
        syntaxes = per_class.setdefault(f.sop_class_uid, [])
        if f.transfer_syntax_uid not in syntaxes:
            syntaxes.append(f.transfer_syntax_uid)
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in per_class.items():
        native = [ts for ts in syntaxes if not ts.is_compressed]
        offered: list[str | UID] = [*native, *(ts for ts in FALLBACK_SYNTAXES if ts not in native)]
        contexts.append(build_context(sop_class, offered))
        contexts.extend(build_context(sop_class, ts) for ts in syntaxes if ts.is_compressed)
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise DeliveryError(
            f"the files need {len(contexts)} presentation contexts, more than the "
            f"{MAX_PRESENTATION_CONTEXTS} one association can carry (PS3.8 9.3.2.2); "
            "push them in smaller batches"
        )
    return contexts


def _describe_rejection(primitive: A_ASSOCIATE) -> str:
    return (
        f"rejected ({primitive.result_str}, source: {primitive.source_str}, "
        f"reason: {primitive.reason_str})"
    )


def _disable_nagle(assoc: Association) -> None:
    """Send each PDU at once: a small command PDU held back by Nagle's algorithm waits for
    the peer's delayed ACK (tens of ms per C-STORE); pynetdicom leaves TCP_NODELAY off."""
    transport = assoc.dul.socket
    raw = transport.socket if transport is not None else None
    if raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not TCP (a test double) or already closed: only slower
        LOG.debug("cannot set TCP_NODELAY: %s", exc)


@contextmanager
def _association(
    ae: AE,
    host: str,
    port: int,
    called_aet: str,
    *,
    tls: ssl.SSLContext | None,
    max_pdu: int,
) -> Iterator[Association]:
    """An established association, released on exit; DeliveryError when there is none."""
    responses: list[A_ASSOCIATE] = []
    connected: list[bool] = []

    def on_acse_recv(event: evt.Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if isinstance(primitive, A_ASSOCIATE) and primitive.result is not None:
            responses.append(primitive)

    def on_conn_open(event: evt.Event) -> None:
        connected.append(True)
        _disable_nagle(event.assoc)

    peer = f"{called_aet}@{host}:{port}"
    assoc = ae.associate(
        host,
        port,
        ae_title=called_aet,
        max_pdu=max_pdu,
        tls_args=(tls, host) if tls is not None else None,
        evt_handlers=[(evt.EVT_ACSE_RECV, on_acse_recv), (evt.EVT_CONN_OPEN, on_conn_open)],
    )
    if not assoc.is_established:
        if not responses:
            # When the peer closes the connection right after its A-ASSOCIATE-RJ (dcmtk
            # does), pynetdicom may see the close first and abort without reading the
            # reply, which then still waits in the DUL queue.
            leftover = assoc.dul.receive_pdu(wait=False)
            if isinstance(leftover, A_ASSOCIATE) and leftover.result is not None:
                responses.append(leftover)
        if responses and responses[-1].result != RESULT_ACCEPTED:
            raise DeliveryError(f"association with {peer} {_describe_rejection(responses[-1])}")
        if responses:
            raise DeliveryError(f"{peer} accepted none of the proposed presentation contexts")
        if not connected:
            raise DeliveryError(f"cannot connect to {peer}: connection refused or timed out")
        raise DeliveryError(f"association with {peer} aborted or closed before the peer answered")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _application_entity(
    calling_aet: str, acse_timeout: float, dimse_timeout: float, network_timeout: float
) -> AE:
    try:
        ae = AE(ae_title=calling_aet)
    except ValueError as exc:
        raise ConfigurationError(f"calling AE title {calling_aet!r}: {exc}") from exc
    ae.acse_timeout = acse_timeout
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = network_timeout
    return ae


def echo(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = DEFAULT_CALLING_AET,
    *,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> int:
    """C-ECHO the peer (Verification, PS3.4 A) and return the response status."""
    ae = _application_entity(calling_aet, timeout, timeout, timeout)
    ae.add_requested_context(Verification)
    with _association(ae, host, port, called_aet, tls=tls, max_pdu=DEFAULT_MAX_PDU) as assoc:
        response = assoc.send_c_echo()
    if "Status" not in response:
        raise DeliveryError(f"no C-ECHO response from {called_aet}@{host}:{port}")
    return int(response.Status)


def _accepts(assoc: Association, sop_class: UID, syntax: UID) -> bool:
    """Whether an accepted context carries ``syntax`` as it is or re-encoded by pynetdicom."""
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != sop_class:
            continue
        accepted = UID(cx.transfer_syntax[0])
        if accepted == syntax:
            return True
        # pynetdicom converts between uncompressed syntaxes of one byte order.
        if not (accepted.is_compressed or syntax.is_compressed) and (
            accepted.is_little_endian == syntax.is_little_endian
        ):
            return True
    return False


def _load_for_sending(assoc: Association, item: DicomFile) -> Dataset | str:
    """The data set to send, decompressed if the peer refused its syntax; else why not."""
    if not _accepts(assoc, item.sop_class_uid, item.transfer_syntax_uid):
        if not item.transfer_syntax_uid.is_compressed:
            return f"peer accepted no context for {item.sop_class_uid.name} in any syntax"
        if not _accepts(assoc, item.sop_class_uid, ExplicitVRLittleEndian):
            return (
                f"peer refused {item.sop_class_uid.name} in "
                f"{item.transfer_syntax_uid.name} and uncompressed"
            )
    try:
        dataset = dcmread(item.path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return f"cannot read the file: {exc}"
    if not _accepts(assoc, item.sop_class_uid, item.transfer_syntax_uid):
        try:
            # Decoding loses nothing more: a lossless stream gives back every value, a lossy
            # one the values it already had (and keeps its Lossy Image Compression).
            dataset.decompress()
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            return f"peer refused {item.transfer_syntax_uid.name} and decompressing failed: {exc}"
    return dataset


def _outcome(item: DicomFile, response: Dataset) -> tuple[str, StoreOutcome]:
    status = int(response.Status)
    category = code_to_category(status)
    description = STORAGE_SERVICE_CLASS_STATUS.get(status, (category, ""))[1] or category
    comment = response.get("ErrorComment")
    reason = f"{description}: {comment}" if comment else description
    return category, StoreOutcome(item.path, status, reason)


def push(
    paths: Sequence[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = DEFAULT_CALLING_AET,
    *,
    progress: bool = False,
    tls: ssl.SSLContext | None = None,
    max_pdu: int = DEFAULT_MAX_PDU,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 120.0,
) -> PushResult:
    """C-STORE every DICOM file under ``paths`` to the peer over one association.

    Non-DICOM files are skipped and counted. A refused or failed instance is recorded in
    ``failed`` and the others still go; DeliveryError when the association cannot be
    established or is aborted (then nothing more can be sent).
    """
    started = time.monotonic()
    files, skipped = find_dicom_files(paths)
    if not files:
        return PushResult(0, (), skipped, (), time.monotonic() - started)
    ae = _application_entity(calling_aet, acse_timeout, dimse_timeout, network_timeout)
    ae.requested_contexts = presentation_contexts(files)
    sent = 0
    failed: list[StoreOutcome] = []
    warnings: list[StoreOutcome] = []
    peer = f"{called_aet}@{host}:{port}"
    with (
        _association(ae, host, port, called_aet, tls=tls, max_pdu=max_pdu) as assoc,
        tqdm(total=len(files), unit="file", desc=f"C-STORE {peer}", disable=not progress) as bar,
    ):
        for item in files:
            lost = f"association with {peer} lost after {sent} of {len(files)} files"
            if not assoc.is_established:
                raise DeliveryError(f"{lost} (peer released or aborted it)")
            dataset = _load_for_sending(assoc, item)
            if isinstance(dataset, str):
                failed.append(StoreOutcome(item.path, None, dataset))
                bar.update()
                continue
            try:
                response = assoc.send_c_store(dataset)
            except RuntimeError as exc:  # the association ended between two requests
                raise DeliveryError(f"{lost}: {exc}") from exc
            except (ValueError, AttributeError) as exc:  # cannot be encoded for the context
                failed.append(StoreOutcome(item.path, None, f"cannot send: {exc}"))
                bar.update()
                continue
            if "Status" not in response:
                # No response within dimse_timeout, or the peer aborted: pynetdicom has
                # already aborted the association.
                raise DeliveryError(f"{lost} (no C-STORE response for {item.path})")
            category, outcome = _outcome(item, response)
            if category == STATUS_SUCCESS:
                sent += 1
            elif category == STATUS_WARNING:
                sent += 1
                warnings.append(outcome)
            else:
                failed.append(outcome)
            bar.update()
    return PushResult(
        sent=sent,
        failed=tuple(failed),
        skipped=skipped,
        warnings=tuple(warnings),
        elapsed=time.monotonic() - started,
    )
