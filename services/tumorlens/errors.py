"""One exception hierarchy for the whole service, mapped once to DIMSE statuses and gRPC codes.

DIMSE status values for the Storage Service Class are listed in PS3.4 Annex B.2.3 and PS3.7
Annex C; ``0xC000``-``0xCFFF`` is the implementation-specific "Cannot understand" range, which
we subdivide so that a PACS log tells what was wrong.
"""

from __future__ import annotations

from typing import Final

import grpc

# --- DIMSE status values (PS3.7 Annex C, PS3.4 Table B.2-1) -----------------------------------
SUCCESS: Final = 0x0000
PROCESSING_FAILURE: Final = 0x0110
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
REFUSED_OUT_OF_RESOURCES: Final = 0xA700
ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
ERROR_CANNOT_UNDERSTAND: Final = 0xC000
# Our subdivisions of "Cannot understand" (0xC000-0xCFFF).
CANNOT_UNDERSTAND_INVALID_UID: Final = 0xC001
CANNOT_UNDERSTAND_UNDECODABLE: Final = 0xC002
CANNOT_UNDERSTAND_UID_MISMATCH: Final = 0xC003
CANNOT_UNDERSTAND_MISSING_ATTRIBUTE: Final = 0xC004


class TumorlensError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigurationError(TumorlensError):
    """A setting or config file cannot be used."""


# --- inbound instances ----------------------------------------------------------------------
class InstanceRejected(TumorlensError):
    """A received instance cannot be stored; nothing was written."""


class InvalidUIDError(InstanceRejected):
    """A UID is not ``^[0-9]+(\\.[0-9]+)*$`` of at most 64 characters (PS3.5 9.1)."""


class UndecodableDatasetError(InstanceRejected):
    """The data set cannot be parsed (truncated, bad lengths, wrong encoding)."""


class UIDMismatchError(InstanceRejected):
    """The data set's SOP Instance/Class UID differs from the C-STORE request's."""


class MissingAttributeError(InstanceRejected):
    """A Type 1 attribute the service needs (Study/Series Instance UID...) is absent."""


class SOPClassNotAcceptedError(InstanceRejected):
    """The SOP Class is not one this service stores."""


class InsufficientStorageError(InstanceRejected):
    """The spool volume is within the configured reserve of being full."""


# --- job store ------------------------------------------------------------------------------
class JobStoreError(TumorlensError):
    """The job store (Redis) failed or refused an operation."""


class JobStoreUnavailableError(JobStoreError):
    """Redis cannot be reached."""


class StudyNotFoundError(JobStoreError):
    """No job exists for this study (or version)."""


class InvalidTransitionError(JobStoreError):
    """A job state change not in the allowed transitions."""


# --- processing ----------------------------------------------------------------------------
class StudyProcessingError(TumorlensError):
    """A study cannot be processed; it ends FAILED with this message as the reason."""


class NoUsableSeriesError(StudyProcessingError):
    """The study holds no series the pipeline can use."""


class WriterError(StudyProcessingError):
    """Findings or a reference series that no DICOM result object can be made from."""


class DeliveryError(TumorlensError):
    """Results could not be delivered to a destination."""


class ModelCardError(ConfigurationError):
    """A model or its card is missing, malformed or inconsistent."""


class ModelIntegrityError(ModelCardError):
    """The model file's sha256 differs from its card's."""


class InputDataError(TumorlensError):
    """Training or evaluation data that cannot be used; the message names the file."""


class SliceImageError(InputDataError):
    """An image file cannot be used as a slice (undecodable, or wrong channel count)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class VolumeError(InputDataError):
    """A volume cannot be read or preprocessed (names the file)."""


class EvaluationDataError(InputDataError):
    """An evaluation folder holds nothing that can be evaluated (missing, empty, unknown
    class folders, no readable case)."""


class RequestRejectedError(TumorlensError):
    """A status API request refused before it reached the job store."""


class InvalidRequestError(RequestRejectedError):
    """A malformed status API request (a negative limit, an unknown state...)."""


class ServerBusyError(RequestRejectedError):
    """The status API is at its limit of concurrent calls of this kind."""


# --- the one mapping --------------------------------------------------------------------------
_DIMSE_STATUS: Final[tuple[tuple[type[TumorlensError], int], ...]] = (
    (InvalidUIDError, CANNOT_UNDERSTAND_INVALID_UID),
    (UndecodableDatasetError, CANNOT_UNDERSTAND_UNDECODABLE),
    (UIDMismatchError, CANNOT_UNDERSTAND_UID_MISMATCH),
    (MissingAttributeError, CANNOT_UNDERSTAND_MISSING_ATTRIBUTE),
    (SOPClassNotAcceptedError, ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (InsufficientStorageError, REFUSED_OUT_OF_RESOURCES),
    (JobStoreUnavailableError, REFUSED_OUT_OF_RESOURCES),
    (InstanceRejected, ERROR_CANNOT_UNDERSTAND),
)

_GRPC_CODE: Final[tuple[tuple[type[TumorlensError], grpc.StatusCode], ...]] = (
    (StudyNotFoundError, grpc.StatusCode.NOT_FOUND),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ServerBusyError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidTransitionError, grpc.StatusCode.FAILED_PRECONDITION),
    (JobStoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ConfigurationError, grpc.StatusCode.INVALID_ARGUMENT),
    (InstanceRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (StudyProcessingError, grpc.StatusCode.FAILED_PRECONDITION),
    (DeliveryError, grpc.StatusCode.UNAVAILABLE),
)


def dimse_status_for(exc: BaseException) -> int:
    """The C-STORE response status for ``exc``; anything unexpected is a processing failure."""
    for kind, status in _DIMSE_STATUS:
        if isinstance(exc, kind):
            return status
    return PROCESSING_FAILURE


def grpc_code_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for ``exc``; anything unexpected is INTERNAL."""
    for kind, code in _GRPC_CODE:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL
