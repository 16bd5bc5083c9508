"""The label map as a DICOM Segmentation (PS3.3 A.51 Segmentation IOD; A.51.x Label Map SEG).

One segment per BraTS sub-region present, coded as listed in :mod:`tumorlens.writers.codes`
(Segmented Property Category SCT 49755003 "Morphologically Abnormal Structure"; types SCT
6574001 "Necrosis", SCT 79654002 "Edema", SCT 108369006 "Neoplasm"), anatomic region SCT
12738006 "Brain", Segment Algorithm Type AUTOMATIC with the model card(s) as Segment Algorithm
Identification (C.8.20.2). Frames reference the source MR instances they were derived from
(Derivation Image Sequence, C.7.6.16.2.6); empty frames are omitted.

``BINARY`` (Segmentation Storage, PS3.4 B.5) is the default: every SEG-capable viewer reads it.
``LABELMAP`` (Label Map Segmentation Storage, DICOM 2024c) is smaller but newer and is not yet
read everywhere.
"""

from __future__ import annotations

from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from tumorlens.errors import WriterError
from tumorlens.writers import codes
from tumorlens.writers.findings import Findings, LabelMap, set_software_versions
from tumorlens.writers.frames import frame_number

SEG_SERIES_NUMBER: Final = 901
SERIES_DESCRIPTION: Final = "AI SEG - research use only"
MANUFACTURER: Final = "tumorlens"
MANUFACTURER_MODEL_NAME: Final = "tumorlens brain tumour segmentation"
DEVICE_SERIAL_NUMBER: Final = "research"
CONTENT_LABEL: Final = "TUMOUR_SEG"
SEGMENTATION_TYPES: Final = ("BINARY", "LABELMAP")


def segment_description(
    number: int, label: int, findings: Findings, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    """The Segment Sequence item (PS3.3 C.8.20.2) of BraTS ``label`` as segment ``number``."""
    region = codes.REGION_BY_LABEL[label]
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=region.display,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE.coded(),
        segmented_property_type=region.property_type.coded(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=findings.uid(f"segment.{region.key}"),
        tracking_id=f"{region.key} (BraTS label {label})",
        anatomic_regions=[codes.BRAIN.coded()],
        display_color=hd.color.CIELabColor.from_rgb(*region.rgb),
    )


def build_seg(findings: Findings, segmentation_type: str = "BINARY") -> hd.seg.Segmentation:
    """A new SEG series in the source study, with deterministic Series / SOP Instance UIDs.

    Raises :class:`WriterError` when the label map is empty: a Segmentation needs a segment.
    """
    if segmentation_type not in SEGMENTATION_TYPES:
        raise WriterError(f"segmentation_type must be one of {', '.join(SEGMENTATION_TYPES)}")
    labels = findings.present_labels
    if not labels:
        raise WriterError("the label map is empty; there is nothing to segment")
    # One algorithm identification for all segments: the segmentation model (the first one
    # when several were ensembled; all are named in Software Versions).
    algorithm = findings.segmentation_models()[0].algorithm_identification()
    descriptions = [
        segment_description(number, label, findings, algorithm)
        for number, label in enumerate(labels, start=1)
    ]
    # Stacked-segments array (frames, rows, columns, segments): segment n is label labels[n-1],
    # so absent labels leave no gaps in the segment numbers (C.8.20.2: numbered from 1).
    stacked = np.stack([findings.label_map == label for label in labels], axis=-1)
    if findings.multi_frame_sources:
        stacked = _in_frame_order(findings, stacked)
    seg = hd.seg.Segmentation(
        source_images=list(findings.source_instances),
        pixel_array=stacked.astype(np.uint8),
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=findings.uid("seg.series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=findings.uid(f"seg.{segmentation_type.lower()}.instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=findings.software_versions()[0],
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label=CONTENT_LABEL,
        content_description="Brain tumour sub-regions (AI, research use only)",
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
    )
    set_software_versions(seg, findings)
    return seg


def _in_frame_order(findings: Findings, stacked: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Slices (sorted along the normal) -> the source instance's frames, 1..NumberOfFrames."""
    (source,) = findings.multi_frame_sources
    frames = np.zeros((int(source.NumberOfFrames), *stacked.shape[1:]), dtype=bool)
    for k, view in enumerate(findings.reference_series):
        number = frame_number(view)
        if number is None:
            raise WriterError("a multi-frame reference slice without its frame number")
        frames[number - 1] = stacked[k]
    return frames


def label_for_segment(seg: Dataset, number: int) -> int:
    """The BraTS label of segment ``number``, from its Segmented Property Type code."""
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) == number:
            code = str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue)
            region = codes.REGION_BY_TYPE_CODE.get(code)
            if region is None:
                raise WriterError(f"segment {number}: unknown property type {code}")
            return region.label
    raise WriterError(f"the SEG has no segment {number}")


def label_map_from_seg(seg: hd.seg.Segmentation, reference_series: list[Dataset]) -> LabelMap:
    """Rebuild the BraTS label map on the reference grid from a SEG (read tolerantly: any
    segment numbering, frames missing where they were empty)."""
    uids = [str(ds.SOPInstanceUID) for ds in reference_series]
    numbers = [int(n) for n in seg.segment_numbers]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=numbers,
        combine_segments=False,
        dtype=np.uint8,
    )
    label_map = np.zeros(pixels.shape[:3], dtype=np.uint8)
    for channel, number in enumerate(numbers):
        label_map[pixels[..., channel] > 0] = label_for_segment(seg, number)
    return label_map
