"""Small, valid MR Image Storage instances written with pydicom, for listener tests."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
# Per-instance or per-frame elements of the classic instances that a multi-frame instance does
# not carry at the top level (the frames' functional groups hold them).
_NOT_COPIED = frozenset(
    {
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "ImagePositionPatient",
        "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SliceLocation",
        "PixelData", "WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept",
    }
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticStudy:
    study_instance_uid: str
    series_instance_uids: tuple[str, ...]
    paths: tuple[Path, ...]


def mr_instance(
    study_uid: str, series_uid: str, index: int, rows: int = 64, columns: int = 64
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1234.1"
    ds.Modality = "MR"
    ds.PatientName = "TEST^SYNTHETIC"
    ds.PatientID = "SYN001"
    ds.StudyDate = "20260101"
    ds.SeriesDescription = "AX T1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-32.0, -32.0, float(index) * 5.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 5.0
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(index)
    ds.PixelData = rng.integers(0, 4095, (rows, columns), dtype=np.uint16).tobytes()
    return ds


def write_study(
    out: Path, instances_per_series: int, series: int = 1, rows: int = 64, columns: int = 64
) -> SyntheticStudy:
    study_uid = generate_uid()
    series_uids = tuple(generate_uid() for _ in range(series))
    paths = []
    for s, series_uid in enumerate(series_uids):
        folder = out / f"series{s}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(instances_per_series):
            ds = mr_instance(study_uid, series_uid, i, rows, columns)
            path = folder / f"IM{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return SyntheticStudy(study_uid, series_uids, tuple(paths))


def enhanced_mr(paths: Sequence[Path], path: Path) -> Path:
    """Classic MR instances as one Enhanced MR instance (frames in scrambled order), with
    their patient, study, series and acquisition attributes at the top level."""
    classic = [pydicom.dcmread(p) for p in paths]
    order = np.random.default_rng(0).permutation(len(classic))
    first = classic[0]
    ds = Dataset()
    for element in first:  # patient, study, series and acquisition attributes
        if element.keyword and element.keyword not in _NOT_COPIED and element.VR != "SQ":
            ds.add(element)
    ds.SOPClassUID = ENHANCED_MR
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.NumberOfFrames = len(classic)
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = first.PixelRepresentation
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for i in order:
        position = Dataset()
        position.ImagePositionPatient = copy.deepcopy(classic[i].ImagePositionPatient)
        frame = Dataset()
        frame.PlanePositionSequence = DicomSequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = b"".join(classic[i].PixelData for i in order)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path
