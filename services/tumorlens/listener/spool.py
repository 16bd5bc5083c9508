"""The spool: every acknowledged instance as ``spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

An instance is durable before the listener answers Success: it is written to a temporary file
in the spool's own ``.incoming`` folder, fsync'ed, then hard-linked into place. ``link`` fails
when the target exists, so concurrent copies of one SOP Instance end as one file and an
existing file is never replaced or left half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tumorlens.errors import InsufficientStorageError
from tumorlens.identifiers import InstanceKey, validate_uid

INCOMING = ".incoming"


@dataclass(frozen=True)
class StoredInstance:
    path: Path
    created: bool  # False when the file was already in the spool


class Spool:
    """Durable, traversal-proof storage of received instances."""

    def __init__(self, root: Path, reserve_bytes: int = 0) -> None:
        self.root = root
        self.reserve_bytes = reserve_bytes
        self._incoming = root / INCOMING
        self._incoming.mkdir(parents=True, exist_ok=True)
        self._clear_incoming()

    def _clear_incoming(self) -> None:
        # Left-overs of a crash between write and link were never acknowledged: drop them.
        for leftover in self._incoming.iterdir():
            leftover.unlink(missing_ok=True)

    def path_for(self, key: InstanceKey) -> Path:
        return (
            self.root
            / key.study_instance_uid
            / key.series_instance_uid
            / f"{key.sop_instance_uid}.dcm"
        )

    def study_dir(self, study_instance_uid: str) -> Path:
        return self.root / validate_uid(study_instance_uid, "StudyInstanceUID")

    def check_free_space(self, incoming_bytes: int) -> None:
        """Raise :class:`InsufficientStorageError` if storing would eat into the reserve."""
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.reserve_bytes:
            raise InsufficientStorageError(
                f"spool volume has {free // 2**20} MiB free, reserve is "
                f"{self.reserve_bytes // 2**20} MiB"
            )

    def store(self, key: InstanceKey, encoded: bytes) -> StoredInstance:
        """Write ``encoded`` (a complete DICOM file) durably; an existing instance is kept."""
        final = self.path_for(key)
        if final.exists():
            return StoredInstance(final, created=False)
        self.check_free_space(len(encoded))
        tmp, fd = self._temp_file(key)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(encoded)
                fh.flush()
                os.fsync(fh.fileno())
            created_dirs = self._makedirs(final.parent)
            try:
                os.link(tmp, final)
                created = True
            except FileExistsError:
                created = False  # a concurrent association stored the same instance first
            if created or created_dirs:
                _fsync_dir(final.parent)
            for directory in created_dirs:
                _fsync_dir(directory.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return StoredInstance(final, created=created)

    def _temp_file(self, key: InstanceKey) -> tuple[Path, int]:
        """An exclusive temp file named after the instance and the writing thread.

        Cheaper than mkstemp's random names on the ingest hot path; unique because one
        thread writes one instance at a time.
        """
        name = f"{key.sop_instance_uid}.{os.getpid()}.{threading.get_ident()}.part"
        path = self._incoming / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            return path, os.open(path, flags, 0o644)
        except FileExistsError:
            fd, other = tempfile.mkstemp(dir=self._incoming, suffix=".part")
            return Path(other), fd

    def _makedirs(self, directory: Path) -> list[Path]:
        """Create ``directory`` and missing parents; return those created (for fsync)."""
        missing: list[Path] = []
        current = directory
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir()
        return missing

    def studies(self) -> Iterator[str]:
        """Study Instance UIDs present in the spool."""
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and entry.name != INCOMING:
                yield entry.name

    def instances(self, study_instance_uid: str) -> Iterator[tuple[str, str, Path]]:
        """(SeriesInstanceUID, SOPInstanceUID, path) of every stored instance of a study."""
        study = self.study_dir(study_instance_uid)
        if not study.is_dir():
            return
        for series in sorted(study.iterdir()):
            if not series.is_dir():
                continue
            for path in sorted(series.glob("*.dcm")):
                yield series.name, path.stem, path


def _fsync_dir(directory: Path) -> None:
    """Make a directory entry (a new file or folder name) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
