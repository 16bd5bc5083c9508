"""The input contract of the writers: what the pipeline found in one study, as frozen data.

A :class:`Findings` is valid when its constructor returns (label map aligned with the reference
series, probabilities in range...), so every writer can rely on it without checking again.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from tumorlens.errors import WriterError
from tumorlens.identifiers import validate_uid
from tumorlens.inference.card import ModelCard
from tumorlens.writers import codes
from tumorlens.writers.codes import Concept

# Relative tolerance when checking that a series is sorted and that probabilities sum to 1.
POSITION_TOLERANCE_MM: Final = 1e-3
PROBABILITY_SUM_TOLERANCE: Final = 1e-3
# Namespace of the name-based UUIDs behind result UIDs (PS3.5 B.2); fixed for tumorlens.
UID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:tumorlens:result-objects")

#: ModelIdentity.task of the 2D classifier whose opinion is ``Findings.slice_types``.
SLICE_CLASSIFICATION: Final = "slice-classification"

LabelMap = npt.NDArray[np.uint8]
ActivationMap = npt.NDArray[np.float32]


class Side(StrEnum):
    """Where the whole tumour lies relative to the mid-sagittal plane."""

    LEFT = "left"
    RIGHT = "right"
    BILATERAL = "bilateral"
    MIDLINE = "midline"

    @property
    def concept(self) -> Concept:
        return {
            Side.LEFT: codes.LEFT,
            Side.RIGHT: codes.RIGHT,
            Side.BILATERAL: codes.BILATERAL,
            Side.MIDLINE: codes.MIDLINE,
        }[self]

    @property
    def is_laterality(self) -> bool:
        """Left, right and bilateral are lateralities (CID 244); midline is not, so a Finding
        Site (TID 300) carries it as Topographical Modifier instead."""
        return self is not Side.MIDLINE


@dataclass(frozen=True)
class ModelIdentity:
    """One model that contributed to the findings, as its model card names it."""

    name: str
    version: str
    sha256: str
    task: str = "segmentation"

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise WriterError("a model needs a name and a version")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise WriterError(f"model {self.name}: sha256 must be 64 lower-case hex digits")

    @classmethod
    def from_card(cls, card: ModelCard, task: str = "segmentation") -> ModelIdentity:
        return cls(name=card.name, version=card.version, sha256=card.sha256, task=task)

    @property
    def label(self) -> str:
        """``name version`` as shown to people (PDF, Software Versions)."""
        return f"{self.name} {self.version}"

    def algorithm_identification(self) -> hd.AlgorithmIdentificationSequence:
        """Segment Algorithm Identification (PS3.3 C.8.20.2, Algorithm Identification Macro
        Table 10-19): family DCM 123110 "Artificial Intelligence" (CID 7162), the sha256 of
        the weights as the one parameter, so a reader can tell exactly which model made it."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=codes.ARTIFICIAL_INTELLIGENCE.coded(),
            version=self.version,
            source="tumorlens",
            parameters={"sha256": self.sha256, "task": self.task},
        )


@dataclass(frozen=True)
class TypeProbability:
    """The probability of one tumour type, with the concept that codes it (from the card)."""

    name: str
    display: str
    concept: Concept
    probability: float


@dataclass(frozen=True)
class Lesion:
    """One connected component of the whole tumour."""

    volumes_ml: dict[int, float]  # BraTS label -> volume in mL (present labels only)
    side: Side
    centroid_lps: tuple[float, float, float]  # patient coordinates (mm)
    slices: tuple[int, int]  # first and last slice of the reference series holding it, from 1

    @property
    def whole_tumour_ml(self) -> float:
        return float(sum(self.volumes_ml.values()))


@dataclass(frozen=True)
class Measurements:
    """Per-region measurements made on the label map, in the reference series' space."""

    volumes_ml: dict[int, float]  # BraTS label -> volume in mL (present labels only)
    lesion_count: int
    side: Side
    centroid_lps: tuple[float, float, float] | None  # whole tumour, patient coordinates (mm)
    lesions: tuple[Lesion, ...] = ()  # largest first

    @property
    def whole_tumour_ml(self) -> float:
        return float(sum(self.volumes_ml.values()))


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity, not elementwise
class Findings:
    """Everything the writers encode for one study version.

    ``reference_series`` holds the source series (T1c preferred, else FLAIR) sorted along the
    slice normal; ``label_map[k]`` is aligned pixel for pixel with ``reference_series[k]``.
    """

    reference_series: tuple[Dataset, ...]
    label_map: LabelMap
    measurements: Measurements
    hgg_probability: float
    tumour_types: tuple[TypeProbability, ...]
    models: tuple[ModelIdentity, ...]
    study_version: int
    sequences_used: tuple[str, ...] = ()
    activation_map: ActivationMap | None = None
    # The 2D slice classifier's study-level opinion (model task "slice-classification"),
    # and what a reader should know about how the findings were made (missing sequences...).
    slice_types: tuple[TypeProbability, ...] = ()
    notes: tuple[str, ...] = ()
    # The instances the reference slices come from, when they are frames of a multi-frame
    # instance (views made by :func:`tumorlens.writers.frames.frame_views`); empty for a
    # classic series, whose slices are the instances.
    multi_frame_sources: tuple[Dataset, ...] = ()

    def __post_init__(self) -> None:
        series = self.reference_series
        if not series:
            raise WriterError("the reference series is empty")
        study = validate_uid(series[0].get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = validate_uid(series[0].get("SeriesInstanceUID"), "SeriesInstanceUID")
        for ds in series:
            if ds.get("StudyInstanceUID") != study or ds.get("SeriesInstanceUID") != series_uid:
                raise WriterError("the reference instances are not one series of one study")
        if self.multi_frame_sources:
            uids = {str(ds.SOPInstanceUID) for ds in self.multi_frame_sources}
            if len(uids) != 1 or {str(ds.SOPInstanceUID) for ds in series} != uids:
                raise WriterError("multi-frame references must be frames of one instance")
        locations = slice_locations(series)
        if any(b - a <= POSITION_TOLERANCE_MM for a, b in itertools.pairwise(locations)):
            raise WriterError("the reference series is not sorted along its slice normal")
        shape = (len(series), int(series[0].Rows), int(series[0].Columns))
        if self.label_map.dtype != np.uint8 or self.label_map.shape != shape:
            raise WriterError(
                f"label_map must be uint8 of shape {shape}, got "
                f"{self.label_map.dtype} {self.label_map.shape}"
            )
        unknown = set(np.unique(self.label_map).tolist()) - {0, *codes.BRATS_LABELS}
        if unknown:
            raise WriterError(f"label_map holds labels {sorted(unknown)} (BraTS 0..3 expected)")
        if self.activation_map is not None and (
            self.activation_map.dtype != np.float32
            or self.activation_map.shape != shape
            or not np.all(np.isfinite(self.activation_map))
            or float(self.activation_map.min(initial=0.0)) < 0.0
            or float(self.activation_map.max(initial=0.0)) > 1.0
        ):
            raise WriterError(f"activation_map must be float32 in 0..1 of shape {shape}")
        if not 0.0 <= self.hgg_probability <= 1.0:
            raise WriterError("hgg_probability must lie in 0..1")
        if not self.tumour_types:
            raise WriterError("at least one tumour type probability is needed")
        probabilities = [t.probability for t in self.tumour_types]
        if any(not 0.0 <= p <= 1.0 for p in probabilities):
            raise WriterError("tumour type probabilities must lie in 0..1")
        if abs(sum(probabilities) - 1.0) > PROBABILITY_SUM_TOLERANCE:
            raise WriterError("tumour type probabilities must sum to 1")
        if self.slice_types:
            values = [t.probability for t in self.slice_types]
            if any(not 0.0 <= p <= 1.0 for p in values) or (
                abs(sum(values) - 1.0) > PROBABILITY_SUM_TOLERANCE
            ):
                raise WriterError("slice type probabilities must lie in 0..1 and sum to 1")
            if not any(m.task == SLICE_CLASSIFICATION for m in self.models):
                raise WriterError("slice type probabilities need a slice-classification model")
        if not self.models:
            raise WriterError("at least one model identity is needed")
        if self.study_version < 1:
            raise WriterError("study_version starts at 1")
        missing = set(self.present_labels) - set(self.measurements.volumes_ml)
        if missing:
            raise WriterError(f"no volume measured for present label(s) {sorted(missing)}")

    @property
    def source_instances(self) -> tuple[Dataset, ...]:
        """The real instances behind the reference slices (what objects reference)."""
        return self.multi_frame_sources or self.reference_series

    @property
    def study_instance_uid(self) -> str:
        return str(self.reference_series[0].StudyInstanceUID)

    @functools.cached_property
    def present_labels(self) -> tuple[int, ...]:
        """BraTS labels with at least one voxel, ascending (counted once: the map is large)."""
        counts = np.bincount(self.label_map.ravel(), minlength=max(codes.BRATS_LABELS) + 1)
        return tuple(k for k in sorted(codes.BRATS_LABELS) if counts[k])

    @property
    def most_probable_type(self) -> TypeProbability:
        return max(self.tumour_types, key=lambda t: t.probability)

    @property
    def grade(self) -> Concept:
        """HGG when its probability is at least one half, else LGG."""
        return codes.HIGH_GRADE_GLIOMA if self.hgg_probability >= 0.5 else codes.LOW_GRADE_GLIOMA

    @property
    def grade_probability(self) -> float:
        """The probability of :attr:`grade`."""
        p = self.hgg_probability
        return p if p >= 0.5 else 1.0 - p

    def slice_classifier(self) -> ModelIdentity | None:
        return next((m for m in self.models if m.task == SLICE_CLASSIFICATION), None)

    def segmentation_models(self) -> tuple[ModelIdentity, ...]:
        """The models that made the label map (all models when none says segmentation)."""
        chosen = tuple(m for m in self.models if m.task == "segmentation")
        return chosen or self.models

    def software_versions(self) -> tuple[str, ...]:
        """Software Versions (0018,1020): one value per model, ``name version``."""
        return tuple(m.label for m in self.models)

    def uid(self, kind: str) -> str:
        """The deterministic UID of this study version's ``kind`` (e.g. ``"seg.series"``)."""
        model_parts = (f"{m.name}={m.version}={m.sha256}" for m in self.models)
        return deterministic_uid(
            self.study_instance_uid, f"v{self.study_version}", *sorted(model_parts), kind
        )


def set_software_versions(ds: Dataset, findings: Findings) -> None:
    """Software Versions (0018,1020), LO VM 1-n: one ``name version`` value per model.

    highdicom takes one string or a tuple (which pydicom warns about), so writers pass the
    first value to highdicom and set the full list here.
    """
    ds.SoftwareVersions = list(findings.software_versions())


def deterministic_uid(*parts: str) -> str:
    """A UID under ``2.25`` (PS3.5 B.2) derived from ``parts``: same parts, same UID.

    The UUID is name-based (RFC 4122 version 5) in a tumorlens namespace, so its decimal form
    has at most 39 digits and the UID at most 44 characters, within the 64 allowed (PS3.5 9.1).
    Parts are joined with a separator that cannot occur in a UID or a version, so
    ``("1.2", "3")`` and ``("1", "2.3")`` differ. (pydicom's ``generate_uid(prefix=None)``
    ignores its entropy sources and is random, so it cannot serve here.)
    """
    if not parts:
        raise WriterError("a deterministic UID needs at least one part")
    name = "\x1f".join(parts)
    return validate_uid(f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}", "derived UID")


def slice_normal(ds: Dataset) -> npt.NDArray[np.float64]:
    """The slice normal, row cosine x column cosine (PS3.3 C.7.6.2.1.1)."""
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    return np.cross(orientation[:3], orientation[3:])


def slice_locations(series: Sequence[Dataset]) -> list[float]:
    """Each instance's Image Position (Patient) projected on the first instance's normal."""
    normal = slice_normal(series[0])
    return [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in series]


def sort_series(series: Sequence[Dataset]) -> tuple[Dataset, ...]:
    """The instances of one series ordered along the slice normal, as :class:`Findings` needs."""
    if not series:
        return ()
    locations = slice_locations(series)
    order = sorted(range(len(series)), key=locations.__getitem__)
    return tuple(series[i] for i in order)


def voxel_volume_ml(series: Sequence[Dataset]) -> float:
    """The volume of one voxel of a sorted series: pixel area x distance between slices."""
    row_spacing, column_spacing = (float(v) for v in series[0].PixelSpacing)
    if len(series) > 1:
        locations = slice_locations(series)
        spacing = (locations[-1] - locations[0]) / (len(series) - 1)
    else:
        spacing = float(series[0].get("SliceThickness", 1.0))
    return row_spacing * column_spacing * abs(spacing) / 1000.0


def region_volumes_ml(label_map: LabelMap, series: Sequence[Dataset]) -> dict[int, float]:
    """Volume in mL of every present BraTS label, by counting voxels (DCM 126030)."""
    voxel = voxel_volume_ml(series)
    counts = np.bincount(label_map.ravel(), minlength=max(codes.BRATS_LABELS) + 1)
    return {label: float(counts[label]) * voxel for label in codes.BRATS_LABELS if counts[label]}
