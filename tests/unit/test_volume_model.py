"""The runtime 3D model's resampling shortcut gives exactly the full resampling's labels."""

from __future__ import annotations

import numpy as np
import pytest

from tumorlens.inference.preprocess3d import probabilities_to_native
from tumorlens.inference.volume_model import labels_on_native

GRID = np.diag([3.0, 3.0, 3.0, 1.0])
GRID[:3, 3] = [-30.0, -36.0, -30.0]
# An oblique, flipped, thick-slice native grid like TCGA-FG-6692's.
NATIVE = np.array(
    [[0.9, 0.05, 0.0, -100.0], [0.0, -0.9, 0.1, 110.0], [0.02, 0.0, 5.5, -60.0], [0, 0, 0, 1.0]]
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_on_native_equal_the_full_resampling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = np.zeros((4, 20, 24, 20), np.float32)
    probs[0] = 1.0
    x, y, z = rng.integers(2, 14, size=3)
    probs[:, x : x + 5, y : y + 6, z : z + 4] = rng.random((4, 5, 6, 4))
    probs /= probs.sum(axis=0, keepdims=True)
    shape = (256, 224, 26)
    fast = labels_on_native(probs, GRID, NATIVE, shape)
    np.testing.assert_array_equal(fast, probabilities_to_native(probs, GRID, NATIVE, shape))
    assert fast.any()


def test_no_tumour_on_the_grid_is_no_label_anywhere() -> None:
    probs = np.zeros((4, 8, 8, 8), np.float32)
    probs[0] = 1.0
    assert not labels_on_native(probs, GRID, NATIVE, (64, 64, 10)).any()


def test_small_tumour_components_become_background_and_large_ones_stay() -> None:
    from tumorlens.inference.volume_model import drop_small_tumour_components, min_component_voxels

    probs = np.zeros((4, 20, 20, 20), np.float32)
    probs[0] = 1.0
    probs[:, 2:5, 2:5, 2:5] = [[[[0.1]]], [[[0.2]]], [[[0.6]]], [[[0.1]]]]  # 27 voxels, oedema
    probs[:, 15, 15, 15] = [0.2, 0.0, 0.0, 0.8]  # one enhancing voxel
    probs[:, 10, 10, 10] = [0.3, 0.5, 0.2, 0.0]  # one core voxel ...
    probs[:, 11, 11, 11] = [0.3, 0.0, 0.0, 0.7]  # ... touching an enhancing one diagonally
    out = drop_small_tumour_components(probs, min_voxels=3)
    labels = out.argmax(axis=0)
    assert (labels[2:5, 2:5, 2:5] == 2).all()
    assert labels[15, 15, 15] == 0 and labels[10, 10, 10] == 0 and labels[11, 11, 11] == 0
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-6)
    # a two-voxel component survives a threshold of two
    kept = drop_small_tumour_components(probs, min_voxels=2).argmax(axis=0)
    assert kept[10, 10, 10] == 1 and kept[11, 11, 11] == 3 and kept[15, 15, 15] == 0
    assert probs[3, 15, 15, 15] == pytest.approx(0.8)  # the input is not modified
    # card -> voxels: 0.1 mL on a 3 mm grid is 100 mm3 / 27 mm3 -> 4 voxels
    assert min_component_voxels({"postprocessing": {"min_tumour_component_ml": 0.1}}, 3.0) == 4
    assert min_component_voxels({}, 3.0) == 0


def test_small_enhancement_becomes_tumour_core_and_enough_of_it_stays() -> None:
    from tumorlens.inference.volume_model import merge_small_enhancement, min_enhancing_voxels

    probs = np.zeros((4, 12, 12, 12), np.float32)
    probs[0] = 1.0
    probs[:, 2:6, 2:6, 2:6] = [[[[0.1]]], [[[0.2]]], [[[0.6]]], [[[0.1]]]]  # 64 voxels, oedema
    probs[:, 3, 3, 3] = [0.1, 0.3, 0.2, 0.4]  # two enhancing voxels in two places
    probs[:, 8, 8, 8] = [0.2, 0.1, 0.3, 0.4]
    probs[:, 4, 4, 4] = [0.1, 0.25, 0.45, 0.2]  # oedema that core + enhancing outweigh
    merged = merge_small_enhancement(probs, min_voxels=3)  # 2 voxels in all: too few
    labels, before = merged.argmax(axis=0), probs.argmax(axis=0)
    assert not (labels == 3).any()
    assert labels[3, 3, 3] == 1 and labels[8, 8, 8] == 1  # still tumour core, now 'core'
    assert labels[4, 4, 4] == 1  # 0.25 + 0.2 > 0.45: the summed evidence wins
    assert (labels[before == 2] != 0).all()  # no tumour voxel lost
    np.testing.assert_allclose(merged.sum(axis=0), probs.sum(axis=0), atol=1e-6)
    assert probs[3, 3, 3, 3] == pytest.approx(0.4)  # the input is not modified
    # counted over the whole study, not per component: two voxels reach a threshold of two
    assert merge_small_enhancement(probs, min_voxels=2) is probs
    assert min_enhancing_voxels({"postprocessing": {"min_enhancing_ml": 0.2}}, 2.0) == 25
    assert min_enhancing_voxels({"postprocessing": {"min_tumour_component_ml": 0.2}}, 2.0) == 0


def test_postprocess_drops_small_components_before_counting_enhancement() -> None:
    """A lone enhancing speck is dropped first, so the tumour's own two enhancing voxels fall
    below a threshold of three and become core; counted the other way round they would not."""
    from tumorlens.inference.volume_model import postprocess

    probs = np.zeros((4, 12, 12, 12), np.float32)
    probs[0] = 1.0
    probs[:, 2:6, 2:6, 2:6] = [[[[0.1]]], [[[0.2]]], [[[0.6]]], [[[0.1]]]]  # oedema
    probs[:, 3, 3, 3:5] = [[0.1], [0.3], [0.2], [0.4]]  # two enhancing voxels inside it
    probs[:, 10, 10, 10] = [0.2, 0.0, 0.0, 0.8]  # a lone enhancing speck
    labels = postprocess(probs, 3, 3).argmax(axis=0)
    assert labels[10, 10, 10] == 0
    assert not (labels == 3).any() and (labels[3, 3, 3:5] == 1).all()
    assert (postprocess(probs, 0, 3).argmax(axis=0) == 3).sum() == 3  # merge alone: 3 stay
    assert postprocess(probs, 0, 0) is probs
