"""Checks that a received data set is complete before it is acknowledged.

pydicom decodes leniently: a truncated stream or an element whose declared length runs past
the end of the data decodes without an error, the value simply short. A PACS must not be told
Success for such an instance, so each element's declared length is compared with the bytes
actually read and the pixel data with what the image attributes promise.
"""

from __future__ import annotations

from typing import Final

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from tumorlens.errors import MissingAttributeError, UndecodableDatasetError

UNDEFINED_LENGTH: Final = 0xFFFFFFFF
PIXEL_DATA: Final = Tag(0x7FE0, 0x0010)


def check_complete(dataset: Dataset, transfer_syntax: UID) -> None:
    """Raise if an element is shorter than declared or the pixel data is incomplete."""
    _check_lengths(dataset)
    _check_pixel_data(dataset, transfer_syntax)


def _check_lengths(dataset: Dataset, depth: int = 0) -> None:
    if depth > 16:  # PS3.5 sets no limit; real data never nests this deep
        raise UndecodableDatasetError("sequences nested more than 16 deep")
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if isinstance(raw, RawDataElement):
            value = raw.value
            if raw.length != UNDEFINED_LENGTH and value is not None and len(value) != raw.length:
                raise UndecodableDatasetError(
                    f"element {Tag(tag)} declares {raw.length} bytes but holds {len(value)}: "
                    "truncated data set"
                )
            continue
        if raw is not None and raw.VR == "SQ":
            for item in raw.value:
                _check_lengths(item, depth + 1)


def _check_pixel_data(dataset: Dataset, transfer_syntax: UID) -> None:
    if PIXEL_DATA not in dataset:
        # Type 1 in every image IOD this service stores (PS3.3 C.7.6.3).
        raise MissingAttributeError("Pixel Data (7FE0,0010) is missing")
    raw = dataset.get_item(PIXEL_DATA)
    value = raw.value if raw is not None else None
    if not value:
        raise MissingAttributeError("Pixel Data (7FE0,0010) is empty")
    if transfer_syntax.is_encapsulated:
        # PS3.5 A.4: encapsulated pixel data starts with the Basic Offset Table item.
        if value[:4] not in (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00"):
            raise UndecodableDatasetError("encapsulated Pixel Data does not start with an item")
        return
    try:
        rows = int(dataset.Rows)
        columns = int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits = int(dataset.BitsAllocated)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MissingAttributeError(f"image pixel attributes unusable: {exc}") from exc
    bits_total = rows * columns * samples * frames * bits
    expected = (bits_total + 7) // 8
    if len(value) < expected:
        raise UndecodableDatasetError(
            f"Pixel Data holds {len(value)} bytes; Rows x Columns x frames needs {expected}"
        )
