"""One study version, from its stored instances to findings and DICOM result objects.

Steps (each announced to ``on_step`` before it starts, so the job timeline shows where a run
is and how long each step took): select-series, volumes, align, brain-mask, segment,
classify-slices, findings, write-objects. The same function runs in the worker and in
``tumorlens infer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from tumorlens.analysis.instances import StudyInstances
from tumorlens.analysis.measure import clean_labels, measure
from tumorlens.analysis.models import ModelSet
from tumorlens.analysis.slice_opinion import SliceOpinion
from tumorlens.config import Settings
from tumorlens.dicomio.mr_headers import SEQUENCES
from tumorlens.errors import NoUsableSeriesError, StudyProcessingError
from tumorlens.pipeline.brain_mask import BrainMask, extract_brain
from tumorlens.pipeline.grid import REFERENCE_ORDER, AlignedStudy, align_sequences
from tumorlens.pipeline.series_selection import DISPLAY, select_series
from tumorlens.pipeline.volumes import SeriesVolume, StudyVolumes, nifti_image, selected_volumes
from tumorlens.writers.findings import Findings
from tumorlens.writers.frames import frame_views
from tumorlens.writers.pdf import build_pdf
from tumorlens.writers.sc import build_sc
from tumorlens.writers.seg import build_seg
from tumorlens.writers.sr import build_sr

LOG = logging.getLogger(__name__)

#: Pipeline sequence name -> the 3D model's channel name (BraTS file suffixes).
MODEL_CHANNEL: Final = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
RESEARCH_USE: Final = "Research use only - not for diagnosis. Outputs of reference AI models."

LABELS_FILE: Final = "labels.nii.gz"  # BraTS labels 1 core, 2 oedema, 3 enhancing
BRAIN_MASK_FILE: Final = "brain_mask.nii.gz"

StepHook = Callable[[str], None]


@dataclass
class Analysis:
    """What one run produced: findings, the DICOM objects, and the result document."""

    study_instance_uid: str
    version: int
    findings: Findings
    objects: list[tuple[str, Dataset]]
    result: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    # On the reference series' grid (voxel = column, row, slice; RAS ``affine``), for offline
    # use: the cleaned label map (BraTS 1/2/3) and the brain mask.
    label_volume: npt.NDArray[np.uint8] | None = None
    brain_mask: npt.NDArray[np.uint8] | None = None
    affine: npt.NDArray[np.float64] | None = None

    def save_maps(self, folder: Path) -> None:
        """The label map and brain mask as NIfTI (:data:`LABELS_FILE`, :data:`BRAIN_MASK_FILE`)
        on the reference series' grid: what the SEG was made from."""
        if self.affine is None:
            return
        for name, data in ((LABELS_FILE, self.label_volume), (BRAIN_MASK_FILE, self.brain_mask)):
            if data is not None:
                nib.save(nifti_image(data, self.affine), folder / name)


class _Steps:
    def __init__(self, on_step: StepHook | None) -> None:
        self.on_step = on_step
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.on_step is not None:
            self.on_step(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - started, 3)


def analyse(
    instances: StudyInstances,
    version: int,
    models: ModelSet,
    settings: Settings,
    on_step: StepHook | None = None,
) -> Analysis:
    """Run the pipeline; raises a :class:`~tumorlens.errors.StudyProcessingError` (or another
    :class:`~tumorlens.errors.TumorlensError`) with a reason a person can act on."""
    steps = _Steps(on_step)
    notes: list[str] = []
    with steps.step("select-series"):
        headers, unreadable = instances.headers()
        notes += unreadable
        selection = select_series(
            headers, settings.series_rules, min_slices=settings.series_min_slices
        )
        try:
            selection.require_any()
        except NoUsableSeriesError as exc:
            if unreadable:
                raise NoUsableSeriesError(f"{exc}; unreadable: {'; '.join(unreadable)}") from exc
            raise
        if selection.missing:
            notes.append(
                "no "
                + ", ".join(DISPLAY[s] for s in selection.missing)
                + " series found; analysed without"
            )
    with steps.step("volumes"):
        volumes = selected_volumes(
            selection, instances.series, min_slices=settings.series_min_slices
        )
        notes += [
            f"{DISPLAY.get(d.sequence, d.sequence)} dropped: {d.reason}" for d in volumes.dropped
        ]
        notes += list(volumes.warnings)
    with steps.step("align"):
        aligned = align_sequences(volumes.volumes, reference=_writer_reference(volumes))
        notes += list(aligned.warnings)
    reference = volumes.volumes[aligned.reference]
    with steps.step("brain-mask"):
        brain = extract_brain(aligned, settings.models_dir)
        notes += list(brain.warnings)
    with steps.step("segment"):
        images = {MODEL_CHANNEL[s]: (aligned.array(s), aligned.affine) for s in aligned.sequences}
        prediction = models.volume.predict_arrays(
            images,
            aligned.affine,
            aligned.shape,
            subject_to_mni=brain.subject_to_mni,
            brain_mask=(brain.mask, brain.affine),
        )
    subset_note = models.subset_note(prediction.present)
    if subset_note:
        notes.append(subset_note)
    opinion: SliceOpinion | None = None
    with steps.step("classify-slices"):
        if models.slices is not None and "t1c" in aligned.sequences:
            opinion = models.slices.classify(aligned.array("t1c"), brain.mask)
        elif models.slices is not None:
            notes.append("no post-contrast series: the 2D slice classifier was not run")
    with steps.step("findings"):
        labels, cleaning = clean_labels(
            prediction.labels, aligned.affine, brain.mask, settings.min_lesion_ml
        )
        measurements = measure(labels, aligned.affine, brain.subject_to_mni)
        types = np.asarray(prediction.type_probs, dtype=np.float64)
        activation = (
            np.ascontiguousarray(prediction.activation.transpose(2, 1, 0))
            if prediction.activation is not None
            else None
        )
        reference_series, multi_frame = _read_reference(reference)
        findings = Findings(
            reference_series=reference_series,
            label_map=np.ascontiguousarray(labels.transpose(2, 1, 0)),
            measurements=measurements,
            hgg_probability=prediction.hgg_probability(models.volume.card.type_labels),
            tumour_types=models.volume_types(types / types.sum()),
            models=models.identities(),
            study_version=version,
            sequences_used=tuple(s for s in SEQUENCES if s in aligned.sequences),
            activation_map=activation,
            slice_types=models.slice_types(opinion.probabilities) if opinion else (),
            notes=tuple(notes),
            multi_frame_sources=multi_frame,
        )
    with steps.step("write-objects"):
        objects = build_objects(findings, settings)
    result = _result(
        instances,
        version,
        selection=selection.as_dict(),
        volumes=volumes,
        aligned=aligned,
        brain=brain,
        findings=findings,
        opinion=opinion,
    )
    result["cleaning"] = cleaning.as_dict()
    result["segmentation_seconds"] = round(prediction.seconds, 3)
    result["objects"] = [
        {
            "kind": kind,
            "sop_class_uid": str(ds.SOPClassUID),
            "sop_instance_uid": str(ds.SOPInstanceUID),
        }
        for kind, ds in objects
    ]
    result["timings_s"] = steps.timings
    return Analysis(
        instances.study_instance_uid,
        version,
        findings,
        objects,
        result,
        steps.timings,
        label_volume=labels,
        brain_mask=brain.mask,
        affine=aligned.affine,
    )


def build_objects(findings: Findings, settings: Settings) -> list[tuple[str, Dataset]]:
    """SEG (when anything was segmented), SR, PDF and, when configured, burned-in SC."""
    objects: list[tuple[str, Dataset]] = []
    seg = None
    if findings.present_labels:
        seg = build_seg(findings, settings.segmentation_type)
        objects.append(("SEG", seg))
    objects.append(("SR", build_sr(findings, seg)))
    objects.append(("PDF", build_pdf(findings, datetime.now(UTC))))
    if settings.burned_overlays:
        objects += [("SC", sc) for sc in build_sc(findings)]
    return objects


def _writer_reference(volumes: StudyVolumes) -> str:
    """The reference series: T1c, else FLAIR, T2, T1; classic (single-frame) series first, as
    more viewers overlay a SEG on them than on frames of an Enhanced MR instance."""
    present = [name for name in REFERENCE_ORDER if name in volumes.volumes]
    classic = [n for n in present if all(s.frame is None for s in volumes.volumes[n].slices)]
    return (classic or present)[0]


def _read_reference(volume: SeriesVolume) -> tuple[tuple[Dataset, ...], tuple[Dataset, ...]]:
    """The reference slices, whole, in the volume's slice order, and the multi-frame instance
    they are frames of (none for a classic series)."""
    if all(s.frame is None for s in volume.slices):
        return tuple(pydicom.dcmread(s.path) for s in volume.slices), ()
    paths = {s.path for s in volume.slices}
    if len(paths) != 1:
        raise StudyProcessingError(
            f"the reference series is split over {len(paths)} multi-frame instances: result"
            " objects for such series are not supported"
        )
    source = pydicom.dcmread(paths.pop())
    views = frame_views(source)
    return tuple(views[(s.frame or 1) - 1] for s in volume.slices), (source,)


def _result(
    instances: StudyInstances,
    version: int,
    *,
    selection: dict[str, Any],
    volumes: StudyVolumes,
    aligned: AlignedStudy,
    brain: BrainMask,
    findings: Findings,
    opinion: SliceOpinion | None,
) -> dict[str, Any]:
    m = findings.measurements
    names = {1: "core", 2: "oedema", 3: "enhancing"}
    return {
        "intended_use": RESEARCH_USE,
        "study_instance_uid": instances.study_instance_uid,
        "version": version,
        "instances": instances.instance_count,
        "sequences_used": list(findings.sequences_used),
        "sequences_missing": [s for s in SEQUENCES if s not in aligned.sequences],
        "series_selection": selection,
        "dropped_series": [
            {
                "sequence": d.sequence,
                "series_instance_uid": d.series_instance_uid,
                "reason": d.reason,
            }
            for d in volumes.dropped
        ],
        "alignment": {
            "reference": aligned.reference,
            "methods": {s: a.method for s, a in aligned.sequences.items()},
        },
        "brain_mask": {
            "method": brain.method,
            "volume_ml": round(brain.volume_ml, 1),
            "agreement": round(brain.agreement, 3),
        },
        "volumes_ml": {
            **{names[k]: round(m.volumes_ml.get(k, 0.0), 3) for k in (1, 2, 3)},
            "whole_tumour": round(m.whole_tumour_ml, 3),
        },
        "lesion_count": m.lesion_count,
        "lesions": [
            {
                "volumes_ml": {
                    **{names[k]: round(lesion.volumes_ml.get(k, 0.0), 3) for k in (1, 2, 3)},
                    "whole_tumour": round(lesion.whole_tumour_ml, 3),
                },
                "side": lesion.side.value,
                "centroid_lps_mm": list(lesion.centroid_lps),
                "slices": list(lesion.slices),
            }
            for lesion in m.lesions
        ],
        "side": m.side.value if m.lesion_count else None,
        "centroid_lps_mm": list(m.centroid_lps) if m.centroid_lps else None,
        "grade": {
            "hgg_probability": round(findings.hgg_probability, 4),
            "group": "HGG" if findings.hgg_probability >= 0.5 else "LGG",
        },
        "tumour_type": {
            "most_probable": findings.most_probable_type.name,
            "probabilities": {t.name: round(t.probability, 4) for t in findings.tumour_types},
        },
        "slice_classifier": (
            {
                "probabilities": {k: round(v, 4) for k, v in opinion.probabilities.items()},
                "slices": len(opinion.slices),
            }
            if opinion
            else None
        ),
        "models": [
            {"name": mi.name, "version": mi.version, "sha256": mi.sha256, "task": mi.task}
            for mi in findings.models
        ],
        "notes": list(findings.notes),
    }
