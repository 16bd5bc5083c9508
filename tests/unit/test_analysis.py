"""The analysis' own arithmetic: label cleaning, measurements, pooling slice opinions, and how
a folder of files becomes one study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.synthetic import write_study
from tumorlens.analysis.instances import StudyInstances
from tumorlens.analysis.measure import clean_labels, measure
from tumorlens.analysis.slice_opinion import pool
from tumorlens.config import load_settings
from tumorlens.errors import ConfigurationError, NoUsableSeriesError, StudyProcessingError
from tumorlens.writers.findings import Side

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 uL voxels, RAS, origin at voxel 0
AFFINE[:3, 3] = [-40.0, -40.0, -40.0]  # voxel 20 is x = 0 (the mid-sagittal plane)


def ball(shape: tuple[int, int, int], centre: tuple[int, int, int], r: float) -> np.ndarray:
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= r * r


def test_cleaning_drops_speckle_and_labels_far_from_the_brain() -> None:
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    labels[ball(shape, (28, 20, 20), 4)] = 2  # a lesion in the brain
    labels[ball(shape, (28, 20, 20), 2)] = 3
    labels[10, 10, 10] = 1  # one voxel: speckle (8 uL)
    labels[1:4, 1:4, 1:4] = 3  # 27 voxels outside the brain (orbit, scalp)
    brain = ball(shape, (20, 20, 20), 14).astype(np.uint8)
    cleaned, report = clean_labels(labels, AFFINE, brain, min_lesion_ml=0.1)
    assert cleaned[1:4, 1:4, 1:4].sum() == 0
    assert cleaned[10, 10, 10] == 0
    assert (cleaned[ball(shape, (28, 20, 20), 4)] > 0).all()
    assert report.removed_outside_brain_ml == pytest.approx(27 * 0.008)
    assert report.removed_small_ml == pytest.approx(0.008)
    assert report.components_removed == 1


def test_measurements_of_a_right_sided_lesion() -> None:
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    lesion = ball(shape, (30, 20, 20), 4)
    labels[lesion] = 2
    labels[ball(shape, (30, 20, 20), 2)] = 3
    m = measure(labels, AFFINE, subject_to_mni=None)
    voxel_ml = 0.008
    assert m.volumes_ml[3] == pytest.approx(ball(shape, (30, 20, 20), 2).sum() * voxel_ml)
    assert m.whole_tumour_ml == pytest.approx(lesion.sum() * voxel_ml)
    assert m.lesion_count == 1
    assert m.side is Side.RIGHT  # RAS +x is the patient's right
    assert m.centroid_lps == pytest.approx((-20.0, 0.0, 0.0))  # LPS x = -RAS x


def test_side_is_judged_in_mni_space_when_the_head_is_turned() -> None:
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    labels[ball(shape, (30, 20, 20), 3)] = 2
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # a subject whose left-right is mirrored in MNI
    assert measure(labels, AFFINE, subject_to_mni=flip).side is Side.LEFT


def test_two_lesions_either_side_are_bilateral_and_midline_ones_midline() -> None:
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    labels[ball(shape, (8, 20, 20), 3)] = 2
    labels[ball(shape, (32, 20, 20), 3)] = 2
    m = measure(labels, AFFINE, None)
    assert (m.side, m.lesion_count) == (Side.BILATERAL, 2)
    middle = np.zeros(shape, np.uint8)
    middle[ball(shape, (20, 20, 10), 4)] = 3
    assert measure(middle, AFFINE, None).side is Side.MIDLINE
    middle[ball(shape, (32, 20, 30), 3)] = 2  # and a lesion on the right
    assert measure(middle, AFFINE, None).side is Side.RIGHT
    straddling = np.zeros(shape, np.uint8)
    straddling[0:40, 18:22, 18:22] = 2  # across the plane, 22 % of it within 8 mm
    assert measure(straddling, AFFINE, None).side is Side.BILATERAL


def test_each_lesion_is_measured_largest_first() -> None:
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    small = ball(shape, (8, 20, 10), 2)
    large = ball(shape, (30, 20, 28), 4)
    labels[small] = 3
    labels[large] = 2
    labels[ball(shape, (30, 20, 28), 2)] = 1
    m = measure(labels, AFFINE, None)
    assert m.lesion_count == len(m.lesions) == 2
    first, second = m.lesions
    assert first.whole_tumour_ml == pytest.approx(large.sum() * 0.008)
    assert first.volumes_ml[1] == pytest.approx(ball(shape, (30, 20, 28), 2).sum() * 0.008)
    assert set(first.volumes_ml) == {1, 2} and set(second.volumes_ml) == {3}
    assert (first.side, second.side) == (Side.RIGHT, Side.LEFT)
    assert first.slices == (28 - 4 + 1, 28 + 4 + 1)  # grid slices counted from 1
    assert second.slices == (10 - 2 + 1, 10 + 2 + 1)
    assert first.centroid_lps == pytest.approx((-20.0, 0.0, 16.0))
    assert sum(lesion.whole_tumour_ml for lesion in m.lesions) == pytest.approx(m.whole_tumour_ml)


def test_no_tumour_measures_nothing() -> None:
    m = measure(np.zeros((8, 8, 8), np.uint8), AFFINE, None)
    assert (m.volumes_ml, m.lesion_count, m.centroid_lps) == ({}, 0, None)


def test_pooling_weighs_the_slices_that_show_a_tumour() -> None:
    labels = ("glioma", "meningioma", "notumor", "pituitary")
    probs = np.array(
        [[0.0, 0.0, 1.0, 0.0]] * 10  # ten slices without tumour
        + [[0.8, 0.1, 0.05, 0.05], [0.9, 0.05, 0.0, 0.05], [0.6, 0.2, 0.1, 0.1]],
        dtype=np.float32,
    )
    out = pool(probs, labels)
    assert sum(out.values()) == pytest.approx(1.0)
    assert out["notumor"] == pytest.approx(1 - np.mean([0.95, 1.0, 0.9]))
    assert max(out, key=lambda k: out[k]) == "glioma"
    healthy = pool(np.array([[0.05, 0.05, 0.85, 0.05]] * 12, np.float32), labels)
    assert max(healthy, key=lambda k: healthy[k]) == "notumor"


def test_a_folder_with_two_studies_needs_one_named(tmp_path: Path) -> None:
    a = write_study(tmp_path / "a", 3)
    b = write_study(tmp_path / "b", 2, series=2)
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(StudyProcessingError, match="2 studies"):
        StudyInstances.from_folder(tmp_path)
    chosen = StudyInstances.from_folder(tmp_path, b.study_instance_uid)
    assert chosen.instance_count == 4 and len(chosen.series) == 2
    assert len(chosen.unreadable) == 1  # the text file, skipped
    assert StudyInstances.from_folder(tmp_path / "a").study_instance_uid == a.study_instance_uid


def test_a_folder_without_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(NoUsableSeriesError, match="no DICOM instances"):
        StudyInstances.from_folder(tmp_path)


def test_result_settings() -> None:
    settings = load_settings(
        environ={"TUMORLENS_BURNED_OVERLAYS": "yes", "TUMORLENS_SEGMENTATION_TYPE": "LABELMAP"}
    )
    assert settings.burned_overlays is True and settings.segmentation_type == "LABELMAP"
    with pytest.raises(ConfigurationError, match="burned_overlays"):
        load_settings(environ={"TUMORLENS_BURNED_OVERLAYS": "maybe"})
    with pytest.raises(ConfigurationError, match="segmentation_type"):
        load_settings(environ={"TUMORLENS_SEGMENTATION_TYPE": "RLE"})


def test_key_images_go_through_the_main_lesion() -> None:
    from tumorlens.writers.report_pdf import key_slices

    labels = np.zeros((26, 8, 8), np.uint8)
    labels[3, 4, 4] = 3  # a speck low in the stack
    labels[15:19, 2:7, 2:7] = 2  # the lesion, largest on slice 16
    labels[16, 1:8, 1:8] = 2
    assert key_slices(labels) == [15, 16, 17]
    single = np.zeros((26, 8, 8), np.uint8)
    single[0, 2:5, 2:5] = 1  # on the first slice only: it and its next neighbours
    assert key_slices(single) == [0, 1, 2]
    assert key_slices(np.zeros((26, 8, 8), np.uint8)) == [6, 13, 19]


def test_a_sequence_subset_the_card_does_not_validate_is_noted() -> None:
    from types import SimpleNamespace

    from tumorlens.analysis.models import ModelSet

    def models(inputs: dict[str, object]) -> ModelSet:
        card = SimpleNamespace(raw={"inputs": [inputs]})
        return ModelSet(volume=SimpleNamespace(card=card), slices=None)  # type: ignore[arg-type]

    validated = models({"validated_subsets": [["t1", "t1ce", "t2", "flair"], ["t1ce", "flair"]]})
    assert validated.subset_note(("t1", "t1ce", "t2", "flair")) is None
    assert validated.subset_note(("t1ce", "flair")) is None
    note = validated.subset_note(("t2",))
    assert note is not None
    assert "ran on t2," in note and "validated: flair+t1+t1ce+t2; flair+t1ce" in note
    assert models({}).subset_note(("t2",)) is None  # a card that lists none: nothing to say


def test_delivery_attempts_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="delivery_attempts"):
        load_settings(environ={"TUMORLENS_DELIVERY_ATTEMPTS": "0"})
