"""The DICOM result writers on a real make-study MR series with a synthetic tumour: every object
is written, validated with dciodvfy where it knows the IOD, and read back."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image

from tests.helpers.dcmqi import assert_seg_matches
from tests.helpers.dicom3tools import dciodvfy
from tumorlens.dicomio.make_study import make_study
from tumorlens.errors import WriterError
from tumorlens.writers import codes
from tumorlens.writers.codes import Concept
from tumorlens.writers.findings import (
    SLICE_CLASSIFICATION,
    Findings,
    Measurements,
    ModelIdentity,
    Side,
    TypeProbability,
    deterministic_uid,
    region_volumes_ml,
    sort_series,
)
from tumorlens.writers.pdf import build_pdf, extract_pdf
from tumorlens.writers.sc import build_sc
from tumorlens.writers.seg import build_seg, label_map_from_seg
from tumorlens.writers.sr import DISCLAIMER, build_sr

SHAPE = (64, 64, 20)  # NIfTI voxel grid: columns, rows, slices
SPACING = (0.9, 0.9, 5.0)
GENERATED = datetime(2026, 1, 2, 5, 6, 7)
TYPES = (
    TypeProbability("glioma", "Glioma", Concept("393563007", "Glioma (disorder)"), 0.7),
    TypeProbability(
        "meningioma", "Meningioma", Concept("302820008", "Intracranial meningioma (disorder)"), 0.1
    ),
    TypeProbability(
        "metastasis",
        "Metastasis",
        Concept("94225005", "Metastatic malignant neoplasm to brain"),
        0.1,
    ),
    TypeProbability(
        "pituitary", "Pituitary adenoma", Concept("254956000", "Pituitary adenoma (disorder)"), 0.05
    ),
    TypeProbability("notumor", "No tumour", Concept("260413007", "None (qualifier value)"), 0.05),
)
SLICE_TYPES = (
    TypeProbability("glioma", "Glioma", Concept("393563007", "Glioma (disorder)"), 0.6),
    TypeProbability(
        "meningioma", "Meningioma", Concept("302820008", "Intracranial meningioma (disorder)"), 0.2
    ),
    TypeProbability("notumor", "No tumour", Concept("260413007", "None (qualifier value)"), 0.1),
    TypeProbability(
        "pituitary", "Pituitary adenoma", Concept("254956000", "Pituitary adenoma (disorder)"), 0.1
    ),
)
MODELS = (
    ModelIdentity("seg3d", "1.2.0", "a" * 64, task="segmentation"),
    ModelIdentity("type2d", "0.3.1", "b" * 64, task="classification"),
    ModelIdentity("slice2d", "1.1.0", "c" * 64, task=SLICE_CLASSIFICATION),
)


@dataclass(frozen=True)
class Case:
    findings: Findings
    affine_ras: npt.NDArray[np.float64]
    labels_voxel: npt.NDArray[np.uint8]  # BraTS labels on the NIfTI voxel grid


def _write_case(root: Path) -> Case:
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [28.8, 28.8, -47.5]
    head = ((x - 32) / 28) ** 2 + ((y - 32) / 30) ** 2 + ((z - 10) / 9) ** 2 <= 1
    # A sphere 12 columns right of centre in the voxel grid: core, enhancing rim, oedema.
    radius = np.sqrt(
        ((x - 44) * SPACING[0]) ** 2 + ((y - 30) * SPACING[1]) ** 2 + ((z - 10) * SPACING[2]) ** 2
    )
    rng = np.random.default_rng(5)
    brain = 500 + 60 * np.cos(x / 6.0) + rng.normal(0, 20, SHAPE)
    volume = np.where(head, brain, 0) + np.where(radius <= 9, 350, 0)
    nii = root / "t1c.nii.gz"
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), nii)
    study = make_study(
        {"t1c": nii},
        root / "dicom",
        seed=3,
        study_datetime=datetime(2026, 1, 2, 3, 4, 5),
        patient_name="DOE^JANE",
        patient_id="P123",
        patient_birth_date="19700101",
        patient_sex="F",
    )
    series = sort_series([pydicom.dcmread(p) for p in study.series[0].paths])
    labels = np.zeros(SHAPE, np.uint8)
    labels[radius <= 16] = 2
    labels[radius <= 9] = 3
    labels[radius <= 5] = 1
    # make-study stores slice k as P[r, c] = vol[c, r, k], instance number k + 1.
    per_slice = np.transpose(labels, (2, 1, 0))
    label_map = np.ascontiguousarray(per_slice[[int(ds.InstanceNumber) - 1 for ds in series]])
    activation = np.where(label_map > 0, 0.8, 0.05).astype(np.float32)
    findings = Findings(
        reference_series=series,
        label_map=label_map,
        measurements=Measurements(
            region_volumes_ml(label_map, series), 1, Side.LEFT, (10.8, -1.8, 2.5)
        ),
        hgg_probability=0.83,
        tumour_types=TYPES,
        models=MODELS,
        study_version=1,
        sequences_used=("t1c", "flair"),
        activation_map=activation,
        slice_types=SLICE_TYPES,
        notes=("no T1, T2 series found; analysed without",),
    )
    return Case(findings, affine, labels)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _write_case(tmp_path_factory.mktemp("writers-case"))


@pytest.fixture(scope="module")
def seg_path(case: Case, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    build_seg(case.findings).save_as(path)
    return path


def only_private_scheme_warnings(messages: list[str]) -> bool:
    return all(codes.PRIVATE_SCHEME in m and m.startswith("Warning") for m in messages)


# --- findings and UIDs ------------------------------------------------------------------------
def test_deterministic_uid_is_valid_stable_and_distinct() -> None:
    uid = deterministic_uid("1.2.3", "v1", "seg.series")
    assert uid == deterministic_uid("1.2.3", "v1", "seg.series")
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert pydicom.uid.UID(uid).is_valid
    assert uid != deterministic_uid("1.2.3", "v2", "seg.series")
    assert deterministic_uid("1.2", "3") != deterministic_uid("1", "2.3")


def test_findings_reject_misaligned_or_unsorted_input(case: Case) -> None:
    f = case.findings
    with pytest.raises(WriterError, match="shape"):
        replace(f, label_map=f.label_map[1:])
    with pytest.raises(WriterError, match="BraTS"):
        replace(f, label_map=np.full_like(f.label_map, 4))
    with pytest.raises(WriterError, match="sorted"):
        replace(f, reference_series=tuple(reversed(f.reference_series)))
    with pytest.raises(WriterError, match="sum to 1"):
        replace(f, tumour_types=TYPES[:2])
    with pytest.raises(WriterError, match="activation"):
        replace(f, activation_map=f.label_map.astype(np.float32))


def test_the_fixture_label_map_lies_on_the_bright_lesion(case: Case) -> None:
    f = case.findings
    pixels = np.stack([ds.pixel_array for ds in f.reference_series]).astype(float)
    assert pixels[f.label_map == 3].mean() > pixels[f.label_map == 2].mean() + 200
    assert set(f.present_labels) == {1, 2, 3}


def test_uids_are_deterministic_per_study_version(case: Case) -> None:
    f = case.findings
    again = replace(f)
    v2 = replace(f, study_version=2)
    seg1, seg2, seg3 = build_seg(f), build_seg(again), build_seg(v2)
    assert seg1.SOPInstanceUID == seg2.SOPInstanceUID
    assert seg1.SeriesInstanceUID == seg2.SeriesInstanceUID
    assert seg1.SOPInstanceUID != seg3.SOPInstanceUID
    assert seg1.SeriesInstanceUID != seg3.SeriesInstanceUID
    assert build_sr(f, seg1).SOPInstanceUID == build_sr(again, seg2).SOPInstanceUID
    assert build_sr(f, seg1).SOPInstanceUID != build_sr(v2, seg3).SOPInstanceUID
    other_model = replace(f, models=(replace(MODELS[0], version="1.2.1"), *MODELS[1:]))
    assert build_seg(other_model).SOPInstanceUID != seg1.SOPInstanceUID
    kinds = {f.uid(k) for k in ("seg.series", "sr.series", "pdf.series", "sc.series")}
    assert len(kinds) == 4


def test_an_empty_label_map_makes_no_seg(case: Case) -> None:
    empty = replace(
        case.findings,
        label_map=np.zeros_like(case.findings.label_map),
        measurements=replace(case.findings.measurements, volumes_ml={}),
    )
    with pytest.raises(WriterError, match="empty"):
        build_seg(empty)


# --- SEG ----------------------------------------------------------------------------------
def test_seg_binary_reads_back_as_the_label_map(case: Case, seg_path: Path) -> None:
    f = case.findings
    source = f.reference_series[0]
    assert dciodvfy(seg_path) == []
    seg = hd.seg.segread(seg_path)
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID not in {source.SeriesInstanceUID, f.uid("sr.series")}
    assert seg.PatientID == "P123" and str(seg.PatientName) == "DOE^JANE"
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert "AI SEG - research use only" in seg.SeriesDescription
    assert seg.Manufacturer == "tumorlens"
    assert list(seg.SoftwareVersions) == ["seg3d 1.2.0", "type2d 0.3.1", "slice2d 1.1.0"]
    # Segments 1..3 are the labels present, coded per codes.REGIONS.
    types = [str(s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence]
    assert types == ["6574001", "79654002", "108369006"]
    for item in seg.SegmentSequence:
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "seg3d" and algorithm.AlgorithmVersion == "1.2.0"
        assert "a" * 64 in algorithm.AlgorithmParameters
    # Empty frames omitted: one frame per (slice, segment) with voxels.
    expected_frames = sum(
        int(np.any(f.label_map[k] == label))
        for k in range(f.label_map.shape[0])
        for label in (1, 2, 3)
    )
    assert int(seg.NumberOfFrames) == expected_frames
    referenced = {
        str(ref.ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for ref in derivation.SourceImageSequence
    }
    assert referenced <= {str(ds.SOPInstanceUID) for ds in f.reference_series}
    np.testing.assert_array_equal(label_map_from_seg(seg, list(f.reference_series)), f.label_map)


def test_seg_labelmap_reads_back_as_the_label_map(case: Case, tmp_path: Path) -> None:
    f = case.findings
    path = tmp_path / "labelmap.dcm"
    build_seg(f, "LABELMAP").save_as(path)
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation Storage
    assert seg.SOPInstanceUID != build_seg(f).SOPInstanceUID
    np.testing.assert_array_equal(label_map_from_seg(seg, list(f.reference_series)), f.label_map)


def test_seg_geometry_and_voxels_match_in_dcmqi(case: Case, seg_path: Path, tmp_path: Path) -> None:
    assert_seg_matches(seg_path, case.labels_voxel, case.affine_ras, tmp_path / "dcmqi")


# --- SR -----------------------------------------------------------------------------------
def test_sr_reads_back_with_every_measurement(case: Case, seg_path: Path, tmp_path: Path) -> None:
    f = case.findings
    seg = hd.seg.segread(seg_path)
    path = tmp_path / "sr.dcm"
    build_sr(f, seg).save_as(path)
    assert only_private_scheme_warnings(dciodvfy(path))
    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == f.study_instance_uid and sr.PatientID == "P123"
    assert sr.SeriesDescription == "AI SR - research use only"
    assert sr.Manufacturer == "tumorlens"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    comments = [
        item.TextValue
        for item in sr.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    assert comments == [DISCLAIMER, *f.notes]

    report = hd.sr.MeasurementReport.from_sequence([sr])
    observers = report.get_observer_contexts()
    assert any(o.observer_type.value == "121007" for o in observers)  # Device

    regions = report.get_volumetric_roi_measurement_groups()
    assert len(regions) == 3
    for group in regions:
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        number = ref.referenced_segment_numbers[0]
        label = codes.REGION_BY_LABEL[[1, 2, 3][number - 1]]
        assert group.finding_type.value == label.property_type.value
        (volume,) = group.get_measurements(name=codes.VOLUME.coded())
        assert volume.unit.value == "ml"
        assert volume.value == pytest.approx(f.measurements.volumes_ml[label.label], abs=1e-3)

    slice_groups = [
        g
        for g in report.get_image_measurement_groups()
        if str(g.tracking_identifier).startswith("Slice classifier probability")
    ]
    assert [g.finding_type.value for g in slice_groups] == [t.concept.value for t in SLICE_TYPES]
    for group, t in zip(slice_groups, SLICE_TYPES, strict=True):
        (p,) = group.get_measurements()
        assert p.value == pytest.approx(t.probability)
        assert "slice2d" in str(group)  # TID 4019 names the 2D model as the algorithm
    groups = {
        g.finding_type.value: g
        for g in report.get_image_measurement_groups()
        if g not in slice_groups
    }
    whole = groups["WT"]
    values = {m.name.meaning: m.value for m in whole.get_measurements()}
    assert values["Volume"] == pytest.approx(f.measurements.whole_tumour_ml, abs=1e-3)
    assert values["Number of lesions"] == 1
    assert whole.finding_sites[0].laterality.value == codes.LEFT.value
    evaluations = {q.name.value: q.value.value for q in whole.get_qualitative_evaluations()}
    assert evaluations == {"TYPE": "393563007", "GRADE": "HGG"}
    for t in TYPES:
        (p,) = groups[t.concept.value].get_measurements()
        assert p.name.value == "122157" and p.unit.value == "{probability}"
        assert p.value == pytest.approx(t.probability)
    (hgg,) = groups["HGG"].get_measurements()
    (lgg,) = groups["LGG"].get_measurements()
    assert (hgg.value, lgg.value) == (pytest.approx(0.83), pytest.approx(0.17))


# --- PDF ----------------------------------------------------------------------------------
def test_pdf_is_valid_and_renders(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "pdf.dcm"
    build_pdf(case.findings, GENERATED).save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    assert ds.StudyInstanceUID == case.findings.study_instance_uid
    assert ds.PatientID == "P123" and ds.AccessionNumber
    assert ds.BurnedInAnnotation == "YES"
    document = extract_pdf(ds)
    assert document.startswith(b"%PDF") and len(document) == ds.EncapsulatedDocumentLength
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(document)
    if shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils is not installed")
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf),
                    str(tmp_path / "page")], check=True)  # fmt: skip
    page = Image.open(next(tmp_path.glob("page*.png")))
    assert page.width < page.height  # A4 portrait
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    for expected in ("RESEARCH USE ONLY", "P123", "DOE JANE", "seg3d 1.2.0", "HGG", "Glioma"):
        assert expected in text


# --- SC -----------------------------------------------------------------------------------
def test_sc_has_the_overlay_burned_in(case: Case, tmp_path: Path) -> None:
    f = case.findings
    images = build_sc(f)
    assert len(images) == len(f.reference_series)
    k = int(np.argmax(np.count_nonzero(f.label_map, axis=(1, 2))))
    path = tmp_path / "sc.dcm"
    images[k].save_as(path)
    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    assert ds.BurnedInAnnotation == "YES" and ds.StudyInstanceUID == f.study_instance_uid
    rgb = ds.pixel_array
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    # Oedema pixels are green-tinted, so colour (not gray) appears where the tumour is.
    assert np.any(rgb[..., 1].astype(int) - rgb[..., 0].astype(int) > 40)
    assert (
        ds.SourceImageSequence[0].ReferencedSOPInstanceUID == f.reference_series[k].SOPInstanceUID
    )


def test_sr_codes_a_midline_tumour_as_topographical_modifier(case: Case, seg_path: Path) -> None:
    f = case.findings
    midline = replace(f, measurements=replace(f.measurements, side=Side.MIDLINE))
    sr = build_sr(midline, hd.seg.segread(seg_path))
    report = hd.sr.MeasurementReport.from_sequence([sr])
    (whole,) = [g for g in report.get_image_measurement_groups() if g.finding_type.value == "WT"]
    site = whole.finding_sites[0]
    assert site.laterality is None
    assert site.topographical_modifier.value == codes.MIDLINE.value
