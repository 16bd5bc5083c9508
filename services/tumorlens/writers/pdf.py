"""The PDF report as an Encapsulated PDF instance (PS3.3 A.45.1 Encapsulated PDF IOD).

Modules: Patient (C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2) copied from
the source series; Encapsulated Document Series (C.24.1, Modality DOC); General Equipment
(C.7.5.1); SC Equipment (C.8.6.1, Conversion Type WSD "Workstation"); Encapsulated Document
(C.24.2) with Burned In Annotation YES (the PDF shows patient identity), Document Title and
Concept Name LOINC 18748-4 "Diagnostic Imaging Report" (CID 7000), Source Instance Sequence
naming the reference series; SOP Common (C.12.1). highdicom has no encapsulated-document
class, so the data set is built here with pydicom and completed like highdicom's objects:
valid when :func:`build_pdf` returns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, EncapsulatedPDFStorage, ExplicitVRLittleEndian

from tumorlens.identifiers import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tumorlens.writers.codes import Concept
from tumorlens.writers.findings import Findings, set_software_versions
from tumorlens.writers.report_pdf import render_pdf
from tumorlens.writers.seg import MANUFACTURER

PDF_SERIES_NUMBER: Final = 903
SERIES_DESCRIPTION: Final = "AI REPORT - research use only"
DOCUMENT_TITLE: Final = "AI brain tumour MRI report - research use only, not for diagnosis"
MANUFACTURER_MODEL_NAME: Final = "tumorlens brain tumour report"
DIAGNOSTIC_IMAGING_REPORT: Final = Concept("18748-4", "Diagnostic Imaging Report", "LN")

# Patient, General Study and Patient Study attributes copied from the source (PS3.4 C.4.1:
# a derived object in the same study carries the same patient and study).
COPIED_FROM_SOURCE: Final = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
# Type 2 attributes of the copied modules that must be present, empty when unknown.
TYPE_2: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _code_item(concept: Concept) -> Dataset:
    item = Dataset()
    item.CodeValue = concept.value
    item.CodingSchemeDesignator = concept.scheme
    item.CodeMeaning = concept.meaning
    return item


def _source_instances(findings: Findings) -> list[Dataset]:
    items = []
    for ds in findings.source_instances:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    return items


def build_pdf(findings: Findings, generated: datetime | None = None) -> Dataset:
    """An Encapsulated PDF instance of the report, in a new series of the source study.

    ``generated`` (default: now) is the content date/time and is printed in the PDF; with a
    fixed value the UIDs and dates are reproducible.
    """
    moment = generated or datetime.now()
    document = render_pdf(findings, moment)
    length = len(document)  # C.24.2: the length without the padding below
    if len(document) % 2:
        document += b"\0"  # OB values have even length (PS3.5 7.1.1); PDF readers ignore it.
    source = findings.reference_series[0]

    ds = Dataset()
    for keyword in COPIED_FROM_SOURCE:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)  # type: ignore[union-attr]
    for keyword in TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    date, time = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")

    # SOP Common
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = findings.uid("pdf.instance")
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # Encapsulated Document Series
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = findings.uid("pdf.series")
    ds.SeriesNumber = PDF_SERIES_NUMBER
    ds.SeriesDescription = SERIES_DESCRIPTION
    # General Equipment / SC Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER_MODEL_NAME
    set_software_versions(ds, findings)
    if source.get("InstitutionName"):
        ds.InstitutionName = source.InstitutionName
    ds.ConversionType = "WSD"
    # Encapsulated Document
    ds.InstanceNumber = 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionDateTime = moment.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.SourceInstanceSequence = _source_instances(findings)
    ds.DocumentTitle = DOCUMENT_TITLE
    ds.ConceptNameCodeSequence = [_code_item(DIAGNOSTIC_IMAGING_REPORT)]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = document
    ds.EncapsulatedDocumentLength = length

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return ds


def extract_pdf(ds: Dataset) -> bytes:
    """The PDF held by an Encapsulated PDF instance, without the even-length padding."""
    document = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None and 0 < int(length) <= len(document):
        return document[: int(length)]
    return document.rstrip(b"\0")
