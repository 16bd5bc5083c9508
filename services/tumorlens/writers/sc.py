"""The label map burned into the reference images, as Secondary Capture (PS3.3 A.8.1 SC Image
IOD), for PACS and viewers that cannot display a SEG.

One RGB instance per reference slice (so the series scrolls like the source), each the
windowed MR slice with the sub-regions blended in their display colours and "NOT FOR
DIAGNOSIS" burned into the pixels; Burned In Annotation is YES (C.7.6.1.1.5). Small images
are enlarged by an integer factor (nearest neighbour) so the text stays legible; Pixel Spacing
is divided by the same factor. Each instance names its source slice in the Source Image
Sequence (C.7.6.1, purpose DCM 121322 "Source image for image processing operation").
"""

from __future__ import annotations

from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from tumorlens.writers.findings import Findings, set_software_versions
from tumorlens.writers.frames import frame_number
from tumorlens.writers.report_pdf import overlay_rgba, windowed
from tumorlens.writers.seg import MANUFACTURER

SC_SERIES_NUMBER: Final = 904
SERIES_DESCRIPTION: Final = "AI OVERLAY - NOT FOR DIAGNOSIS"
MANUFACTURER_MODEL_NAME: Final = "tumorlens brain tumour overlay"
BURNED_TEXT: Final = "NOT FOR DIAGNOSIS - AI research overlay"
MIN_SIDE: Final = 384
# (axis, sign) -> the PS3.3 C.7.6.1.1.1 patient direction letter.
_LETTERS: Final = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "H", (2, -1): "F"}


def patient_orientation(ds: Dataset) -> tuple[str, str]:
    """Patient Orientation (C.7.6.1.1.1) of the rows and columns, nearest axis only."""
    cosines = [float(v) for v in ds.ImageOrientationPatient]
    letters = []
    for vector in (cosines[:3], cosines[3:]):
        axis = int(np.argmax(np.abs(vector)))
        letters.append(_LETTERS[(axis, 1 if vector[axis] > 0 else -1)])
    return letters[0], letters[1]


def burned_frame(findings: Findings, k: int, factor: int) -> npt.NDArray[np.uint8]:
    """Slice ``k`` as RGB uint8 with overlay and text burned in, enlarged ``factor`` times."""
    gray = windowed(findings.reference_series[k])[..., None].repeat(3, axis=-1)
    rgba = overlay_rgba(findings.label_map[k])
    alpha = rgba[..., 3:4]
    blended = gray * (1.0 - alpha) + rgba[..., :3] * alpha
    image = Image.fromarray(np.rint(blended * 255.0).astype(np.uint8), mode="RGB")
    if factor > 1:
        image = image.resize(
            (image.width * factor, image.height * factor), Image.Resampling.NEAREST
        )
    draw = ImageDraw.Draw(image)
    size = max(10, image.width // 28)
    font = ImageFont.load_default(size=size)
    margin = max(2, size // 3)
    box = draw.textbbox((margin, margin), BURNED_TEXT, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((margin, margin), BURNED_TEXT, font=font, fill=(255, 255, 0))
    return np.asarray(image, dtype=np.uint8)


def _source_image(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    number = frame_number(ds)
    if number is not None:
        item.ReferencedFrameNumber = number
    purpose = Dataset()
    purpose.CodeValue = "121322"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def build_sc(findings: Findings) -> list[hd.sc.SCImage]:
    """One Secondary Capture instance per reference slice, in a new series of the study."""
    source = findings.reference_series[0]
    rows, columns = int(source.Rows), int(source.Columns)
    factor = max(1, -(-MIN_SIDE // min(rows, columns)))
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    series_uid = findings.uid("sc.series")
    images = []
    for k, ds in enumerate(findings.reference_series):
        sc = hd.sc.SCImage(
            pixel_array=burned_frame(findings, k, factor),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            study_instance_uid=findings.study_instance_uid,
            series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=findings.uid(f"sc.instance.{k}"),
            instance_number=k + 1,
            manufacturer=MANUFACTURER,
            patient_id=source.get("PatientID"),
            patient_name=source.get("PatientName"),
            patient_birth_date=source.get("PatientBirthDate"),
            patient_sex=source.get("PatientSex") or None,
            accession_number=source.get("AccessionNumber"),
            study_id=source.get("StudyID"),
            study_date=source.get("StudyDate"),
            study_time=source.get("StudyTime"),
            referring_physician_name=source.get("ReferringPhysicianName"),
            pixel_spacing=(row_spacing / factor, column_spacing / factor),
            patient_orientation=patient_orientation(ds),
            series_description=SERIES_DESCRIPTION,
            manufacturer_model_name=MANUFACTURER_MODEL_NAME,
            software_versions=findings.software_versions()[0],
        )
        set_software_versions(sc, findings)
        sc.BurnedInAnnotation = "YES"
        # General Series Laterality is Type 2C, required for paired body parts only: naming
        # the (unpaired) body part tells validators it is rightly absent.
        sc.BodyPartExamined = source.get("BodyPartExamined") or "BRAIN"
        sc.ImageType = ["DERIVED", "SECONDARY", "OVERLAY"]
        sc.DerivationDescription = "AI tumour sub-regions blended into the windowed MR slice"
        sc.SourceImageSequence = [_source_image(ds)]
        if source.get("StudyDescription"):
            sc.StudyDescription = source.StudyDescription
        images.append(sc)
    return images
