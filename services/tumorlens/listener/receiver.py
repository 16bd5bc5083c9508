"""What happens to one received C-STORE request: check, store durably, count, answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset
from pydicom.uid import UID

from tumorlens.errors import (
    SUCCESS,
    MissingAttributeError,
    SOPClassNotAcceptedError,
    TumorlensError,
    UIDMismatchError,
    dimse_status_for,
)
from tumorlens.identifiers import InstanceKey
from tumorlens.listener.spool import Spool
from tumorlens.store.jobs import JobStore

log = logging.getLogger(__name__)

# PS3.4 Annex B.5: the MR storage SOP Classes this service analyses.
MR_IMAGE_STORAGE: Final = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE_STORAGE: Final = UID("1.2.840.10008.5.1.4.1.1.4.1")
LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE: Final = UID("1.2.840.10008.5.1.4.1.1.4.4")
ACCEPTED_SOP_CLASSES: Final = (
    MR_IMAGE_STORAGE,
    ENHANCED_MR_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
)


@dataclass(frozen=True)
class StoreRequest:
    """The parts of a C-STORE-RQ (PS3.7 9.1.1) and its association the receiver needs."""

    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    calling_aet: str
    calling_host: str


def key_from_dataset(dataset: Dataset, request: StoreRequest) -> InstanceKey:
    """Check the data set against the request and return its validated spool key."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if keyword not in dataset or not str(dataset[keyword].value or ""):
            raise MissingAttributeError(f"{keyword} (Type 1) is missing or empty")
    key = InstanceKey(
        study_instance_uid=str(dataset.StudyInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
    )
    if key.sop_instance_uid != request.affected_sop_instance_uid:
        raise UIDMismatchError(
            "SOPInstanceUID in the data set differs from the request's Affected SOP Instance UID"
        )
    if str(dataset.SOPClassUID) != request.affected_sop_class_uid:
        raise UIDMismatchError("SOPClassUID differs from the request's Affected SOP Class UID")
    if str(dataset.SOPClassUID) not in ACCEPTED_SOP_CLASSES:
        raise SOPClassNotAcceptedError(f"SOP Class {dataset.SOPClassUID} is not MR storage")
    return key


class InstanceReceiver:
    """Stores each instance in the spool and records it in the job store."""

    def __init__(self, spool: Spool, jobs: JobStore) -> None:
        self.spool = spool
        self.jobs = jobs

    def receive(self, dataset: Dataset, encoded: bytes, request: StoreRequest) -> tuple[int, str]:
        """Return the C-STORE status and an error comment; Success only once the instance is
        on disk and counted.

        ``dataset`` must be fully decoded already (a decode failure is the caller's to map).
        """
        try:
            key = key_from_dataset(dataset, request)
            stored = self.spool.store(key, encoded)
            recorded = self.jobs.record_instance(key, request.calling_aet, request.calling_host)
        except TumorlensError as exc:
            status = dimse_status_for(exc)
            log.warning(
                "refused instance %s from %s@%s: %s (status 0x%04X)",
                request.affected_sop_instance_uid[:64],
                request.calling_aet,
                request.calling_host,
                exc,
                status,
            )
            return status, str(exc)
        if not recorded.new:
            log.debug("duplicate instance %s kept once", key.sop_instance_uid)
        elif not stored.created:
            log.info("instance %s was on disk but not counted; counted now", key.sop_instance_uid)
        return SUCCESS, ""
