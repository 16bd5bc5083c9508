"""Dice and HD95 against cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tumorlens.evaluation.seg_metrics import dice, hd95, region_mask, surface


def _box(
    shape: tuple[int, int, int], lo: tuple[int, int, int], hi: tuple[int, int, int]
) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def test_dice_hand_computed() -> None:
    a = np.zeros((4, 1, 1), bool)
    b = np.zeros((4, 1, 1), bool)
    a[0:3] = True  # 3 voxels
    b[1:4] = True  # 3 voxels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_dice_empty_conventions() -> None:
    empty = np.zeros((3, 3, 3), bool)
    full = np.ones((3, 3, 3), bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, full) == 0.0
    with pytest.raises(ValueError):
        dice(empty, np.zeros((2, 2, 2), bool))


def test_hd95_shifted_cube_is_the_shift() -> None:
    # A 4x4x4 cube and the same cube moved 2 voxels along x: every surface voxel of one is at
    # most 2 voxels from the other's surface, and the x-faces are exactly 2 away.
    a = _box((12, 12, 12), (2, 4, 4), (6, 8, 8))
    b = _box((12, 12, 12), (4, 4, 4), (8, 8, 8))
    assert hd95(a, b) == pytest.approx(2.0)
    # Spacing scales distances along that axis.
    assert hd95(a, b, spacing=(3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, a) == 0.0


def test_hd95_single_voxels() -> None:
    a = np.zeros((10, 1, 1), bool)
    b = np.zeros((10, 1, 1), bool)
    a[1] = True
    b[7] = True
    assert hd95(a, b) == pytest.approx(6.0)
    assert hd95(a, b, spacing=(0.5, 1, 1)) == pytest.approx(3.0)


def test_hd95_empty_conventions() -> None:
    empty = np.zeros((5, 5, 5), bool)
    one = empty.copy()
    one[2, 2, 2] = True
    assert hd95(empty, empty) == 0.0
    assert math.isnan(hd95(one, empty))
    assert math.isnan(hd95(empty, one))


def test_hd95_ignores_a_few_outliers() -> None:
    # 100 coincident surface voxels on a line plus one far outlier on one side: the outlier is
    # under 5% of the pooled distances, so HD95 stays 0 while the maximum would be large.
    a = np.zeros((200, 1, 1), bool)
    a[0:100] = True
    b = a.copy()
    b[199] = True
    assert hd95(a, b) == 0.0


def test_surface_of_a_cube_excludes_its_inside() -> None:
    cube = _box((5, 5, 5), (1, 1, 1), (4, 4, 4))  # 27 voxels, 1 inside
    assert surface(cube).sum() == 26


def test_regions_follow_brats() -> None:
    labels = np.array([0, 1, 2, 3]).reshape(4, 1, 1)
    assert region_mask(labels, "WT").ravel().tolist() == [False, True, True, True]
    assert region_mask(labels, "TC").ravel().tolist() == [False, True, False, True]
    assert region_mask(labels, "ET").ravel().tolist() == [False, False, False, True]
