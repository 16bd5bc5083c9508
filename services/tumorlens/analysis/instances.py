"""A study's instances grouped by series, from the spool or from a folder (offline mode)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from tumorlens.errors import NoUsableSeriesError, StudyProcessingError
from tumorlens.listener.spool import Spool
from tumorlens.pipeline.series_selection import SeriesHeader

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyInstances:
    """Instance paths by Series Instance UID, and what could not be read."""

    study_instance_uid: str
    series: dict[str, tuple[Path, ...]]
    unreadable: tuple[str, ...] = field(default=())

    @property
    def instance_count(self) -> int:
        return sum(len(paths) for paths in self.series.values())

    @classmethod
    def from_spool(cls, spool: Spool, study_instance_uid: str) -> StudyInstances:
        by_series: dict[str, list[Path]] = defaultdict(list)
        for series, _sop, path in spool.instances(study_instance_uid):
            by_series[series].append(path)
        if not by_series:
            raise NoUsableSeriesError(f"study {study_instance_uid}: no instances in the spool")
        return cls(study_instance_uid, {k: tuple(v) for k, v in sorted(by_series.items())})

    @classmethod
    def from_folder(cls, folder: Path, study_instance_uid: str | None = None) -> StudyInstances:
        """Every DICOM file under ``folder``; it must hold one study unless one is named."""
        if not folder.is_dir():
            raise StudyProcessingError(f"{folder} is not a directory")
        studies: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
        skipped: list[str] = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_GROUPING)
                study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
                skipped.append(f"{path.name}: {exc}")
                continue
            studies[study][series].append(path)
        if skipped:
            LOG.info("%d file(s) under %s are not DICOM instances; skipped", len(skipped), folder)
        if not studies:
            raise NoUsableSeriesError(f"no DICOM instances under {folder}")
        if study_instance_uid is None:
            if len(studies) > 1:
                raise StudyProcessingError(
                    f"{folder} holds {len(studies)} studies ({', '.join(sorted(studies))});"
                    " name one with --study"
                )
            study_instance_uid = next(iter(studies))
        if study_instance_uid not in studies:
            raise NoUsableSeriesError(f"study {study_instance_uid} is not under {folder}")
        chosen = studies[study_instance_uid]
        return cls(
            study_instance_uid,
            {k: tuple(v) for k, v in sorted(chosen.items())},
            tuple(skipped),
        )

    def headers(self) -> tuple[list[SeriesHeader], list[str]]:
        """One representative header per series (its middle instance), and the series whose
        headers cannot be read (with why): those are left out of series selection."""
        headers: list[SeriesHeader] = []
        problems: list[str] = []
        for series_uid, paths in self.series.items():
            middle = paths[len(paths) // 2]
            try:
                ds = pydicom.dcmread(middle, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError) as exc:
                problems.append(f"series {series_uid}: {middle.name} unreadable: {exc}")
                continue
            if "SOPClassUID" not in ds:
                problems.append(f"series {series_uid}: {middle.name} unreadable: no SOP Class UID")
                continue
            headers.append(SeriesHeader(ds, len(paths)))
        return headers, problems


_GROUPING = ["StudyInstanceUID", "SeriesInstanceUID"]
