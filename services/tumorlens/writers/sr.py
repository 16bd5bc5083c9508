"""The measurements and classifications as a Comprehensive 3D SR (PS3.3 A.35.13) holding a
TID 1500 Measurement Report (PS3.16).

Content tree (codes in :mod:`tumorlens.writers.codes`):

* TID 1500 root, language en-US (TID 1204), device observer "tumorlens" (TID 1002 / 1004)
  naming the model versions, procedure reported DCM 126020 "Multiparametric MRI" (CID 100).
* One TID 1411 Volumetric ROI group per sub-region present: Referenced Segment (the SEG's SOP
  Instance UID and segment number), Finding Type = the segment's property type, Finding Site
  Brain, Volume (SCT 118565006, UCUM ml) by DCM 126030 "Sum of segmented voxel method".
* One TID 1501 group for the whole tumour: Volume, Number of lesions, Finding Site Brain with
  laterality, qualitative evaluations "Imaging-predicted tumour type" = the most probable type's
  concept (from the model card) and "Imaging-predicted glioma grade group" = HGG / LGG (both
  names, and the grade values, private ``99TUMORLENS`` codes).
* One TID 1501 group per tumour type and per grade group whose Finding Type is that concept and
  whose one measurement is DCM 122157 "Probability" in UCUM ``{probability}`` (0..1).
* A DCM 121106 "Comment" text item (TID 1500 is extensible) with the research-use statement.
"""

from __future__ import annotations

from typing import Final

import highdicom as hd
from pydicom.dataset import Dataset

from tumorlens.errors import WriterError
from tumorlens.writers import codes
from tumorlens.writers.codes import Concept
from tumorlens.writers.findings import (
    Findings,
    ModelIdentity,
    Side,
    set_software_versions,
)
from tumorlens.writers.seg import MANUFACTURER, label_for_segment

SR_SERIES_NUMBER: Final = 902
SERIES_DESCRIPTION: Final = "AI SR - research use only"
MANUFACTURER_MODEL_NAME: Final = "tumorlens brain tumour report"
DISCLAIMER: Final = (
    "RESEARCH USE ONLY - NOT FOR DIAGNOSIS. Produced automatically by AI models that are not "
    "a medical device; every finding must be checked by a qualified radiologist."
)
ENGLISH_US: Final = Concept("en-US", "English (United States)", "RFC5646")


def _algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification: name, version, the weights' sha256 as parameter."""
    return hd.sr.AlgorithmIdentification(
        name=model.name, version=model.version, parameters=[f"sha256={model.sha256}"]
    )


def _classifier(findings: Findings) -> ModelIdentity:
    """The model behind the type / grade probabilities: a "classification" model when there is
    one, else the segmentation model (a 3D network with a type head does both)."""
    chosen = [m for m in findings.models if m.task == "classification"]
    return chosen[0] if chosen else findings.segmentation_models()[0]


def slice_probability_groups(
    findings: Findings,
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """TID 1501 per tumour type of the 2D slice classifier's study-level opinion."""
    model = findings.slice_classifier()
    if model is None or not findings.slice_types:
        return []
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=findings.uid(f"sr.slice-probability.{t.name}"),
                identifier=f"Slice classifier probability: {t.display}"[:64],
            ),
            finding_type=t.concept.coded(),
            measurements=[probability(t.probability, model)],
        )
        for t in findings.slice_types
    ]


def observation_context(findings: Findings) -> hd.sr.ObservationContext:
    """TID 1001 with a device observer (TID 1004): tumorlens and its model versions."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=findings.uid("sr.device-observer"),
        name="tumorlens",
        manufacturer_name=MANUFACTURER,
        model_name="; ".join(m.label for m in findings.models)[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
            observer_identifying_attributes=device,
        )
    )


def finding_site(side: Side) -> hd.sr.FindingSite:
    """Brain, with the side as Laterality or, for midline, as Topographical Modifier."""
    if side.is_laterality:
        return hd.sr.FindingSite(codes.BRAIN.coded(), laterality=side.concept.coded())
    return hd.sr.FindingSite(codes.BRAIN.coded(), topographical_modifier=side.concept.coded())


def volume(value_ml: float, model: ModelIdentity) -> hd.sr.Measurement:
    """TID 300 Volume in mL by counting segmented voxels (CID 7474)."""
    return hd.sr.Measurement(
        name=codes.VOLUME.coded(),
        value=round(value_ml, 3),
        unit=codes.MILLILITER.coded(),
        method=codes.SUM_OF_SEGMENTED_VOXELS.coded(),
        algorithm_id=_algorithm(model),
    )


def probability(value: float, model: ModelIdentity) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.PROBABILITY.coded(),
        value=round(value, 4),
        unit=codes.PROBABILITY_UNIT.coded(),
        algorithm_id=_algorithm(model),
    )


def referenced_segment(seg: Dataset, number: int) -> hd.sr.ReferencedSegment:
    """TID 1411 Referenced Segment with the source images of the segment's frames.

    highdicom's ``ReferencedSegment.from_segmentation`` reads Segment Identification from each
    frame, but a SEG with one segment (or a LABELMAP SEG) keeps it in the Shared Functional
    Groups, so the frames are walked here with either place in mind.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames: dict[tuple[str, str], list[int]] = {}
    for item in seg.PerFrameFunctionalGroupsSequence:
        ident = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if ident and int(ident[0].ReferencedSegmentNumber) != number:
            continue
        for derivation in item.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                key = (str(source.ReferencedSOPClassUID), str(source.ReferencedSOPInstanceUID))
                numbers = frames.setdefault(key, [])
                if "ReferencedFrameNumber" in source:
                    numbers.append(int(source.ReferencedFrameNumber))
    seen = [
        hd.sr.SourceImageForSegmentation(
            sop_class, uid, referenced_frame_numbers=sorted(set(numbers)) or None
        )
        for (sop_class, uid), numbers in frames.items()
    ]
    if not seen:
        raise WriterError(f"segment {number} of the SEG references no source image")
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=number,
        source_images=seen,
    )


def region_groups(
    findings: Findings, seg: Dataset | None
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1411 group per segment of ``seg``, measured from the findings."""
    if seg is None:
        return []  # nothing segmented: no SEG, so no per-region groups
    model = findings.segmentation_models()[0]
    groups = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        region = codes.REGION_BY_LABEL[label_for_segment(seg, number)]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=findings.uid(f"sr.roi.{region.key}"), identifier=region.display
                ),
                referenced_segment=referenced_segment(seg, number),
                finding_type=region.property_type.coded(),
                finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE.coded(),
                finding_sites=[hd.sr.FindingSite(codes.BRAIN.coded())],
                algorithm_id=_algorithm(model),
                measurements=[volume(findings.measurements.volumes_ml[region.label], model)],
            )
        )
    return groups


def whole_tumour_group(findings: Findings) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for the whole tumour: volume, lesion count, side, type and grade."""
    segmenter, classifier = findings.segmentation_models()[0], _classifier(findings)
    m = findings.measurements
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=findings.uid("sr.whole-tumour"), identifier="Whole tumour"
        ),
        finding_type=codes.WHOLE_TUMOUR.coded(),
        finding_sites=[finding_site(m.side)],
        measurements=[
            volume(m.whole_tumour_ml, segmenter),
            hd.sr.Measurement(
                name=codes.NUMBER_OF_LESIONS.coded(),
                value=m.lesion_count,
                unit=codes.LESIONS_UNIT.coded(),
                algorithm_id=_algorithm(segmenter),
            ),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                codes.TUMOUR_TYPE.coded(), findings.most_probable_type.concept.coded()
            ),
            hd.sr.QualitativeEvaluation(codes.GLIOMA_GRADE.coded(), findings.grade.coded()),
        ],
        algorithm_id=_algorithm(classifier),
    )


def probability_groups(findings: Findings) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """TID 1501 per tumour type and per grade group: Finding Type + its Probability."""
    model = _classifier(findings)
    entries = [(t.name, t.display, t.concept, t.probability) for t in findings.tumour_types]
    entries += [
        ("grade-hgg", "HGG", codes.HIGH_GRADE_GLIOMA, findings.hgg_probability),
        ("grade-lgg", "LGG", codes.LOW_GRADE_GLIOMA, 1.0 - findings.hgg_probability),
    ]
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=findings.uid(f"sr.probability.{name}"),
                identifier=f"Probability: {display}"[:64],
            ),
            finding_type=concept.coded(),
            measurements=[probability(value, model)],
        )
        for name, display, concept, value in entries
    ]


def measurement_report(findings: Findings, seg: Dataset | None) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree, with the research-use statement as a Comment."""
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(findings),
        procedure_reported=codes.MULTIPARAMETRIC_MRI.coded(),
        imaging_measurements=[
            *region_groups(findings, seg),
            whole_tumour_group(findings),
            *probability_groups(findings),
            *slice_probability_groups(findings),
        ],
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            ENGLISH_US.coded()
        ),
    )
    # The research-use statement, then how the findings were made (missing sequences, motion
    # corrected, series dropped...), each a Comment; UT allows long text.
    for text in (DISCLAIMER, *findings.notes):
        report[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.COMMENT.coded(),
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return report


def build_sr(findings: Findings, seg: Dataset | None) -> hd.sr.Comprehensive3DSR:
    """A new SR series in the source study referencing ``seg`` (as built by
    :func:`tumorlens.writers.seg.build_seg` for the same findings), deterministic UIDs.
    ``seg`` is None when nothing was segmented: then the report states volume 0.

    Completion COMPLETE, Verification UNVERIFIED, Preliminary PRELIMINARY: nobody signed it.
    """
    source = findings.reference_series[0]
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*findings.source_instances, *([seg] if seg is not None else [])],
        content=measurement_report(findings, seg)[0],
        series_instance_uid=findings.uid("sr.series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=findings.uid("sr.instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=source.get("InstitutionName") or None,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=findings.software_versions()[0],
        coding_schemes=[codes.coding_scheme_identification()],
    )
    set_software_versions(sr, findings)
    return sr
