"""Frames of a multi-frame image (Enhanced MR) as single-frame views, for the writers.

The writers work slice by slice on :attr:`Findings.reference_series`. For a classic series
each slice is an instance. For a multi-frame instance each slice is one frame: a *view* is a
light single-frame data set with the instance's Patient/Study/Series attributes, the frame's
Image Plane values from the functional groups (PS3.3 C.7.6.16), its pixels, rescale and
window, and the same SOP Class/Instance UIDs. :func:`frame_number` tells which frame a view
shows, so SEG, SR and SC can reference the real instance and frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

# Private-use Python attribute (not a DICOM element, never written): the frame a view shows.
_FRAME_ATTRIBUTE: Final = "tumorlens_frame_number"
# Top-level elements a view copies: everything but pixel data, frame structure and sequences.
_SKIPPED: Final = frozenset(
    {
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "NumberOfFrames",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "DimensionIndexSequence",
        "DimensionOrganizationSequence",
    }
)


def frame_number(view: Dataset) -> int | None:
    """The 1-based frame of its instance that ``view`` shows; None for a classic instance."""
    value = getattr(view, _FRAME_ATTRIBUTE, None)
    return int(value) if value is not None else None


def is_multi_frame(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds


def _groups(ds: Dataset, index: int) -> Iterator[Dataset]:
    """The frame's own functional groups, then the shared ones."""
    yield ds.PerFrameFunctionalGroupsSequence[index]
    yield from (ds.get("SharedFunctionalGroupsSequence") or [])[:1]


def _first(ds: Dataset, index: int, sequence: str, keyword: str) -> object | None:
    for group in _groups(ds, index):
        items = group.get(sequence)
        if items and keyword in items[0]:
            value: object = items[0][keyword].value
            return value
    return None


def frame_views(ds: Dataset) -> list[Dataset]:
    """One single-frame view per frame of ``ds``, in frame order (frame 1 first)."""
    pixels = np.asarray(ds.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    views = []
    for index in range(pixels.shape[0]):
        view = Dataset()
        for element in ds:
            if element.keyword and element.keyword not in _SKIPPED and element.VR != "SQ":
                view.add(element)
        for sequence, keyword in (
            ("PlanePositionSequence", "ImagePositionPatient"),
            ("PlaneOrientationSequence", "ImageOrientationPatient"),
            ("PixelMeasuresSequence", "PixelSpacing"),
            ("PixelMeasuresSequence", "SliceThickness"),
            ("PixelValueTransformationSequence", "RescaleSlope"),
            ("PixelValueTransformationSequence", "RescaleIntercept"),
            ("FrameVOILUTSequence", "WindowCenter"),
            ("FrameVOILUTSequence", "WindowWidth"),
        ):
            value = _first(ds, index, sequence, keyword)
            if value is not None:
                setattr(view, keyword, value)
        frame = np.ascontiguousarray(pixels[index])
        view.PixelData = frame.tobytes()
        view.file_meta = FileMetaDataset()
        view.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        view.InstanceNumber = index + 1
        setattr(view, _FRAME_ATTRIBUTE, index + 1)
        views.append(view)
    return views
