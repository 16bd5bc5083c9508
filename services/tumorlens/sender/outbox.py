"""The outbox: result objects on disk before they are sent, and until they are delivered.

``outbox/<StudyUID>/v<version>/<SOPInstanceUID>.dcm`` plus ``manifest.json``, which records
the objects and, per destination, what has been delivered. Files are written like the spool's
(temp file, fsync, rename), so a crash never leaves half an object to be sent.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from tumorlens.errors import DeliveryError
from tumorlens.identifiers import validate_uid

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class OutboxObject:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    kind: str  # SEG, SR, PDF, SC


@dataclass
class OutboxBatch:
    """The objects of one study version and what each destination has received."""

    study_instance_uid: str
    version: int
    folder: Path
    objects: list[OutboxObject]
    delivered: dict[str, list[str]] = field(default_factory=dict)  # destination -> SOP UIDs
    calling_aet: str = ""  # who sent the study: results go back to it via `peers`

    def pending(self, destination: str) -> list[OutboxObject]:
        done = set(self.delivered.get(destination, []))
        return [o for o in self.objects if o.sop_instance_uid not in done]

    def mark_delivered(self, destination: str, sop_instance_uids: Iterable[str]) -> None:
        done = set(self.delivered.get(destination, []))
        done.update(sop_instance_uids)
        self.delivered[destination] = sorted(done)
        self.save()

    def save(self) -> None:
        data: dict[str, Any] = {
            "study_instance_uid": self.study_instance_uid,
            "version": self.version,
            "calling_aet": self.calling_aet,
            "objects": [
                {
                    "file": o.path.name,
                    "sop_class_uid": o.sop_class_uid,
                    "sop_instance_uid": o.sop_instance_uid,
                    "kind": o.kind,
                }
                for o in self.objects
            ],
            "delivered": self.delivered,
        }
        atomic_write(self.folder / MANIFEST, json.dumps(data, indent=2).encode())


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, study_instance_uid: str, version: int) -> Path:
        return self.root / validate_uid(study_instance_uid, "StudyInstanceUID") / f"v{version}"

    def write(
        self,
        study_instance_uid: str,
        version: int,
        objects: Iterable[tuple[str, Dataset]],
        calling_aet: str = "",
    ) -> OutboxBatch:
        """Store ``(kind, dataset)`` objects for a study version; the manifest comes last.

        A write starts a new delivery: a re-run sends its (re-made) objects again, under the
        same deterministic UIDs, so the PACS replaces rather than duplicates them.
        """
        folder = self.folder(study_instance_uid, version)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for kind, dataset in objects:
            sop_uid = validate_uid(str(dataset.SOPInstanceUID), "SOPInstanceUID")
            path = folder / f"{sop_uid}.dcm"
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False) as fh:
                dataset.save_as(fh, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(fh.name, path)
            written.append(OutboxObject(path, str(dataset.SOPClassUID), sop_uid, kind))
        batch = OutboxBatch(study_instance_uid, version, folder, written, calling_aet=calling_aet)
        batch.save()
        return batch

    def load(self, study_instance_uid: str, version: int | None = None) -> OutboxBatch:
        """The batch of a study version (the latest when ``version`` is None)."""
        study = self.root / validate_uid(study_instance_uid, "StudyInstanceUID")
        if version is None:
            versions = sorted(int(p.name[1:]) for p in study.glob("v*") if (p / MANIFEST).exists())
            if not versions:
                raise DeliveryError(f"nothing in the outbox for study {study_instance_uid}")
            version = versions[-1]
        batch = self._load_manifest(study / f"v{version}")
        if batch is None:
            raise DeliveryError(f"no outbox for study {study_instance_uid} v{version}")
        return batch

    @staticmethod
    def _load_manifest(folder: Path) -> OutboxBatch | None:
        path = folder / MANIFEST
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        objects = [
            OutboxObject(folder / o["file"], o["sop_class_uid"], o["sop_instance_uid"], o["kind"])
            for o in data["objects"]
        ]
        return OutboxBatch(
            data["study_instance_uid"],
            int(data["version"]),
            folder,
            objects,
            {k: list(v) for k, v in data.get("delivered", {}).items()},
            str(data.get("calling_aet", "")),
        )


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: temp file in its folder, fsync, rename."""
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(fh.name, path)
