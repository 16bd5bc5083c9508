"""registration helpers: the same-grid shortcut of resample, and fill_holes, give what the
slower general routes give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tumorlens.pipeline.registration import fill_holes, resample, support_box


def _interpolated(volume: np.ndarray, mapping: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return ndimage.affine_transform(
        volume.astype(np.float32),
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=shape,
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
        output=np.float32,
    )


def test_same_grid_returns_the_values_interpolation_gives() -> None:
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 3000, (17, 13, 9)).astype(np.int16)
    affine = np.diag([-0.9, -0.9, 5.5, 1.0])
    affine[:3, 3] = [100.0, 90.0, -60.0]
    out = resample(volume, affine, affine, volume.shape)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _interpolated(volume, np.eye(4), volume.shape))
    # A copy: the caller may write into it.
    out[0, 0, 0] = -1.0
    assert volume[0, 0, 0] != -1


def test_a_shifted_or_resized_grid_is_interpolated() -> None:
    volume = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    affine = np.eye(4)
    shifted = affine.copy()
    shifted[0, 3] = 0.5  # half a voxel: the shortcut must not apply
    out = resample(volume, affine, shifted, volume.shape)
    np.testing.assert_allclose(out[:5], (volume[:5] + volume[1:]) / 2)
    assert np.all(out[5] == 0.0)  # beyond the last voxel: outside
    smaller = resample(volume, affine, affine, (3, 5, 4))
    np.testing.assert_array_equal(smaller, volume[:3])


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    noisy = rng.random((40, 36, 7)) < 0.55  # many small holes and open channels
    shell = np.zeros((30, 30, 12), dtype=bool)  # a hollow ball: a 3D hole, holes per slice
    x, y, z = np.ogrid[:30, :30, :12]
    r = (x - 15) ** 2 + (y - 15) ** 2 + ((z - 6) * 2.0) ** 2
    shell[(r <= 121) & (r >= 49)] = True
    cut = shell.copy()
    cut[:, :, :2] = shell[:, :, 4:6]  # the ball cut by the first slices: open to the edge
    return [noisy, shell, cut, np.zeros((5, 5, 3), dtype=bool), np.ones((5, 5, 3), dtype=bool)]


@pytest.mark.parametrize("index", range(5))
def test_fill_holes_equals_scipy(index: int) -> None:
    mask = _masks()[index]
    np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    per_slice = np.stack(
        [ndimage.binary_fill_holes(mask[:, :, k]) for k in range(mask.shape[2])], axis=2
    )
    np.testing.assert_array_equal(fill_holes(mask, per_slice=True), per_slice)


def test_fill_holes_fills_a_hollow_ball() -> None:
    shell = _masks()[1]
    assert fill_holes(shell).sum() > shell.sum()
    assert fill_holes(shell)[15, 15, 6] and not shell[15, 15, 6]


def test_support_box_of_the_identity_is_the_bounding_box_with_its_margins() -> None:
    mask = np.zeros((20, 20, 10), dtype=bool)
    mask[5:8, 9, 4:6] = True
    box = support_box(mask, np.eye(4), mask.shape)
    assert box == (slice(3, 10), slice(7, 12), slice(2, 8))
    # Clipped to the grid; empty masks and boxes mapped outside the grid give None.
    mask[0, 0, 0] = True
    assert support_box(mask, np.eye(4), mask.shape) == (slice(0, 10), slice(0, 12), slice(0, 8))
    assert support_box(np.zeros((4, 4, 4), dtype=bool), np.eye(4), (4, 4, 4)) is None
    far = np.eye(4)
    far[:3, 3] = 100.0
    assert support_box(mask, far, mask.shape) is None


def test_support_box_covers_every_voxel_a_resampling_reaches() -> None:
    """A rotated, scaled source resampled onto a target: outside the box all is zero."""
    source = np.zeros((30, 30, 12), dtype=np.float32)
    source[10:14, 12:20, 5:7] = 1.0
    source_affine = np.diag([2.0, 2.0, 4.0, 1.0])
    target_affine = np.diag([0.9, 0.9, 3.0, 1.0])
    angle = np.radians(20.0)
    transform = np.eye(4)  # target mm -> source mm
    transform[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    shape = (80, 80, 16)
    full = resample(source, source_affine, target_affine, shape, transform=transform)
    source_to_target = np.linalg.inv(transform @ target_affine) @ source_affine
    box = support_box(source > 0, source_to_target, shape)
    assert box is not None
    outside = full.copy()
    outside[box] = 0.0
    assert full.sum() > 0 and not outside.any()


@pytest.mark.parametrize("shift", [(0, 0, 0), (3, -2, 1), (-4, 7, -9), (20, 0, 0)])
def test_a_whole_voxel_shift_is_a_crop_equal_to_interpolation(shift: tuple[int, ...]) -> None:
    """A box of the grid (or a grid moved by whole voxels, partly outside the volume) is
    copied, not interpolated, with the values interpolation gives, zeros outside included."""
    volume = np.random.default_rng(1).random((12, 10, 8)).astype(np.float32)
    affine = np.array([[-1.0, 0, 0, 120], [0, -1.0, 0, 120], [0, 0, 2.5, -77], [0, 0, 0, 1]])
    target = affine.copy()
    target[:3, 3] = affine[:3, :3] @ np.asarray(shift, dtype=float) + affine[:3, 3]
    shape = (9, 6, 11)
    mapping = np.eye(4)
    mapping[:3, 3] = shift
    out = resample(volume, affine, target, shape)
    np.testing.assert_allclose(out, _interpolated(volume, mapping, shape), atol=1e-6)
    out[0, 0, 0] = -1.0
    assert -1.0 not in volume
