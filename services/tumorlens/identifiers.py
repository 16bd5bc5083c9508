"""DICOM identifiers the service relies on, validated before they are used anywhere."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Final

from tumorlens.errors import InvalidUIDError

# PS3.5 9.1: UIDs are dot-separated numeric components, at most 64 characters. Leading zeros
# are forbidden by the standard but common in the wild; they are harmless in a path, so they
# are accepted.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_MAX_LENGTH = 64

# PS3.5 B.2: a UID derived from a UUID needs no registered root. Fixed for tumorlens so that
# every file and association it writes names the same implementation (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID: Final = "2.25." + str(
    uuid.uuid5(uuid.NAMESPACE_URL, "urn:tumorlens:implementation").int
)
IMPLEMENTATION_VERSION_NAME: Final = "TUMORLENS_0_1"


def validate_uid(uid: object, attribute: str) -> str:
    """Return ``uid`` if it is a well-formed UID, else raise :class:`InvalidUIDError`.

    This runs before any UID becomes part of a path, so nothing like ``../`` or ``/`` can.
    """
    if not isinstance(uid, str):
        raise InvalidUIDError(f"{attribute} is missing or not a string")
    if len(uid) > UID_MAX_LENGTH:
        raise InvalidUIDError(f"{attribute} is {len(uid)} characters long (max 64)")
    if not _UID_RE.fullmatch(uid):
        raise InvalidUIDError(f"{attribute} {uid[:70]!r} is not a valid UID")
    return uid


@dataclass(frozen=True)
class InstanceKey:
    """The three UIDs that place an instance in the spool."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        validate_uid(self.study_instance_uid, "StudyInstanceUID")
        validate_uid(self.series_instance_uid, "SeriesInstanceUID")
        validate_uid(self.sop_instance_uid, "SOPInstanceUID")
