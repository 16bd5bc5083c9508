"""The study's series as pydicom sees them: counts and geometry per series."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from tumorlens.errors import NoUsableSeriesError
from tumorlens.listener.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesGeometry:
    """What a volume built from the series would look like (PS3.3 C.7.6.2 Image Plane)."""

    series_instance_uid: str
    series_description: str
    modality: str
    sop_class_uid: str
    instances: int
    rows: int
    columns: int
    frames: int
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    image_orientation_patient: tuple[float, ...]
    slice_spacing: float
    extent_mm: float


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    instances: int
    series: tuple[SeriesGeometry, ...]

    def as_details(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "series_count": len(self.series),
            "series": [asdict(s) for s in self.series],
        }


def _slice_positions(headers: Sequence[pydicom.Dataset]) -> np.ndarray:
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.array(h.ImagePositionPatient, dtype=float) for h in headers])
    return np.sort(positions @ normal)


def _series_geometry(series_uid: str, paths: list[Path]) -> SeriesGeometry:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    first = headers[0]
    # Decode one image so that a missing decoder (compressed transfer syntax) shows here.
    middle = pydicom.dcmread(paths[len(paths) // 2])
    _ = middle.pixel_array
    frames = sum(int(h.get("NumberOfFrames", 1) or 1) for h in headers)
    spacing = (0.0, 0.0)
    iop: tuple[float, ...] = ()
    slice_spacing = extent = 0.0
    if "PixelSpacing" in first and "ImageOrientationPatient" in first:
        spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
        iop = tuple(float(v) for v in first.ImageOrientationPatient)
        if all("ImagePositionPatient" in h for h in headers) and len(headers) > 1:
            positions = _slice_positions(headers)
            steps = np.diff(positions)
            slice_spacing = float(np.median(steps)) if steps.size else 0.0
            extent = float(positions[-1] - positions[0])
    return SeriesGeometry(
        series_instance_uid=series_uid,
        series_description=str(first.get("SeriesDescription", "")),
        modality=str(first.get("Modality", "")),
        sop_class_uid=str(first.SOPClassUID),
        instances=len(headers),
        rows=int(first.Rows),
        columns=int(first.Columns),
        frames=frames,
        pixel_spacing=spacing,
        slice_thickness=float(first.get("SliceThickness", 0) or 0),
        image_orientation_patient=iop,
        slice_spacing=round(slice_spacing, 4),
        extent_mm=round(extent, 3),
    )


def inspect_study(spool: Spool, study_instance_uid: str) -> StudySummary:
    """Read every series of a study from the spool; raise if none can be read."""
    by_series: dict[str, list[Path]] = defaultdict(list)
    for series, _sop, path in spool.instances(study_instance_uid):
        by_series[series].append(path)
    geometries = []
    problems = []
    for series_uid, paths in sorted(by_series.items()):
        try:
            geometries.append(_series_geometry(series_uid, paths))
        except (InvalidDicomError, AttributeError, ValueError, RuntimeError, OSError) as exc:
            # One unreadable series must not sink its study's other series.
            log.warning("series %s unreadable: %s", series_uid, exc)
            problems.append(f"{series_uid}: {exc}")
    if not geometries:
        detail = "; ".join(problems) if problems else "no instances in the spool"
        raise NoUsableSeriesError(f"study {study_instance_uid} has no readable series ({detail})")
    return StudySummary(
        study_instance_uid=study_instance_uid,
        instances=sum(g.instances for g in geometries),
        series=tuple(geometries),
    )
