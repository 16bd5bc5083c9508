import struct
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom.dsutils import decode, encode

from tumorlens.errors import MissingAttributeError, UndecodableDatasetError
from tumorlens.listener.integrity import check_complete


def image(pixels: bytes = b"\0" * 32) -> Dataset:
    ds = Dataset()
    ds.PatientName = "A"
    ds.StudyInstanceUID = "1.2.3"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.SamplesPerPixel = 1
    ds.add_new(0x7FE00010, "OB", pixels)
    return ds


def roundtrip(data: bytes, implicit: bool = False) -> Dataset:
    ds: Dataset = decode(BytesIO(data), implicit, True)
    return ds


def test_complete_dataset_passes() -> None:
    data = encode(image(), False, True)
    assert data is not None
    check_complete(roundtrip(data), ExplicitVRLittleEndian)


def test_truncated_pixel_data_is_caught() -> None:
    data = encode(image(), False, True)
    assert data is not None
    with pytest.raises(UndecodableDatasetError, match="truncated"):
        check_complete(roundtrip(data[:-5]), ExplicitVRLittleEndian)


def test_truncated_before_pixel_data_is_missing() -> None:
    data = encode(image(), False, True)
    assert data is not None
    with pytest.raises(MissingAttributeError, match="Pixel Data"):
        check_complete(roundtrip(data[:60]), ExplicitVRLittleEndian)


def test_huge_declared_length_is_caught() -> None:
    data = encode(image(), True, True)
    assert data is not None
    at = data.find(b"\xe0\x7f\x10\x00")
    bad = data[: at + 4] + struct.pack("<I", 0xFFFFFFF0) + data[at + 8 :]
    with pytest.raises(UndecodableDatasetError):
        check_complete(roundtrip(bad, implicit=True), ImplicitVRLittleEndian)


def test_short_native_pixel_data_is_caught() -> None:
    data = encode(image(b"\0" * 16), False, True)
    assert data is not None
    with pytest.raises(UndecodableDatasetError, match="needs 32"):
        check_complete(roundtrip(data), ExplicitVRLittleEndian)


def test_encapsulated_pixel_data_must_start_with_an_item() -> None:
    data = encode(image(b"\x01" * 32), False, True)
    assert data is not None
    with pytest.raises(UndecodableDatasetError, match="item"):
        check_complete(roundtrip(data), JPEGBaseline8Bit)
