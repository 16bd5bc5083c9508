"""MNI placement of the 3D model grid: a study lands where its subject->MNI affine says, the
brain mask skull-strips it, and cards without a placement keep the head-foreground grid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tumorlens.errors import VolumeError
from tumorlens.inference.preprocess3d import (
    SEQUENCES,
    GridSpec,
    mni_grid,
    preprocess_arrays,
)

SPEC = GridSpec(spacing=4.0, shape=(48, 60, 48), placement="mni", mask_dilation_mm=4.0)
SUBJECT_AFFINE = np.array(
    [[2.0, 0, 0, -100.0], [0, 2.0, 0, -120.0], [0, 0, 2.0, -90.0], [0, 0, 0, 1.0]]
)
SHAPE = (100, 120, 100)


def _subject_to_mni() -> np.ndarray:
    """A rotation of 10 degrees about z, 5 % scale and a shift: subject mm -> MNI mm."""
    a = math.radians(10.0)
    out = np.eye(4)
    out[:3, :3] = 1.05 * np.array(
        [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    )
    out[:3, 3] = [12.0, -7.0, 5.0]
    return out


def _world(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    idx = np.indices(shape).reshape(3, -1)
    return (affine @ np.vstack([idx, np.ones(idx.shape[1])]))[:3].T.reshape(*shape, 3)


@pytest.fixture(scope="module")
def study() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """A "head" (ellipsoid of 1s, plus a bright scalp shell), a brain mask inside it and a
    bright 12 mm cube at a known subject position."""
    world = _world(SHAPE, SUBJECT_AFFINE)
    r = np.sqrt((world[..., 0] / 85) ** 2 + (world[..., 1] / 105) ** 2 + (world[..., 2] / 80) ** 2)
    rng = np.random.default_rng(0)
    head = np.where(r < 0.8, 100.0, 0.0) + np.where((r >= 0.85) & (r < 1.0), 400.0, 0.0)
    head += rng.normal(0, 5, SHAPE) * (r < 1.0)
    cube_centre = np.array([30.0, 20.0, 10.0])
    cube = np.all(np.abs(world - cube_centre) <= 6.0, axis=-1)
    head[cube] = 300.0
    brain = (r < 0.8).astype(np.uint8)
    images = {s: (head.astype(np.float32), SUBJECT_AFFINE) for s in SEQUENCES}
    return images, brain, cube_centre


def test_grid_affine_is_subject_in_mni(study: tuple) -> None:
    images, brain, cube_centre = study
    s2m = _subject_to_mni()
    prepared = preprocess_arrays(
        images, SPEC, subject_to_mni=s2m, brain_mask=(brain, SUBJECT_AFFINE)
    )
    np.testing.assert_allclose(prepared.affine, np.linalg.inv(s2m) @ mni_grid(SPEC), atol=1e-9)
    # The cube's centre of mass on the model grid, in MNI mm, is where s2m puts it.
    image = prepared.image[SEQUENCES.index("t1ce")]
    bright = image > 3.0
    assert bright.any()
    idx = np.argwhere(bright).mean(axis=0)
    found = (mni_grid(SPEC) @ np.append(idx, 1.0))[:3]
    expected = (s2m @ np.append(cube_centre, 1.0))[:3]
    assert np.linalg.norm(found - expected) < SPEC.spacing, (found, expected)
    assert prepared.info["placement"] == "mni"


def test_brain_mask_strips_the_skull(study: tuple) -> None:
    images, brain, _ = study
    prepared = preprocess_arrays(
        images, SPEC, subject_to_mni=_subject_to_mni(), brain_mask=(brain, SUBJECT_AFFINE)
    )
    fg = prepared.foreground
    assert fg.any() and prepared.info["normalisation"] == "brain mask"
    for channel in prepared.image:
        assert not channel[~fg].any(), "voxels outside the dilated brain mask must be 0"
        # z-score over the brain: mean ~0, and the bright scalp shell (4x brain) is gone
        assert abs(float(channel[fg].mean())) < 0.2
    grid_world = _world(SPEC.shape, prepared.affine)
    r = np.sqrt(
        (grid_world[..., 0] / 85) ** 2
        + (grid_world[..., 1] / 105) ** 2
        + (grid_world[..., 2] / 80) ** 2
    )
    assert not fg[r > 0.9].any(), "the dilated mask must stay inside the skull shell"
    assert fg[r < 0.75].all()


def test_mni_grid_without_mask_uses_the_foreground(study: tuple) -> None:
    images, _, _ = study
    prepared = preprocess_arrays(images, SPEC, subject_to_mni=np.eye(4))
    assert prepared.info["normalisation"] == "foreground"
    np.testing.assert_allclose(prepared.affine, mni_grid(SPEC))


def test_mni_grid_needs_subject_to_mni(study: tuple) -> None:
    images, brain, _ = study
    with pytest.raises(VolumeError, match="subject_to_mni"):
        preprocess_arrays(images, SPEC, brain_mask=(brain, SUBJECT_AFFINE))
    with pytest.raises(VolumeError, match="singular"):
        preprocess_arrays(images, SPEC, subject_to_mni=np.zeros((4, 4)))


def test_head_placement_ignores_mni_inputs(study: tuple) -> None:
    images, brain, _ = study
    head = GridSpec(spacing=4.0, shape=(48, 60, 48))
    plain = preprocess_arrays(images, head)
    given = preprocess_arrays(
        images, head, subject_to_mni=_subject_to_mni(), brain_mask=(brain, SUBJECT_AFFINE)
    )
    np.testing.assert_array_equal(plain.image, given.image)
    np.testing.assert_array_equal(plain.affine, given.affine)


def test_grid_spec_round_trip() -> None:
    assert GridSpec.from_dict(SPEC.to_dict()) == SPEC
    old = {"spacing_mm": 3.0, "shape": [64, 80, 64], "top_margin_mm": 9.0, "clip": 5.0}
    assert GridSpec.from_dict(old).placement == "head"
    assert "placement" not in GridSpec().to_dict()  # head cards stay as they were
    with pytest.raises(ValueError, match="placement"):
        GridSpec(placement="talairach")


def test_default_mni_grid_covers_the_template_brain() -> None:
    """The default 3 mm grid holds the ICBM152 2009a brain mask's box (x -71..71,
    y -107..73, z -85..81 mm) with margin."""
    spec = GridSpec(placement="mni")
    grid = mni_grid(spec)
    lo = grid[:3, 3]
    hi = (grid @ np.append(np.asarray(spec.shape) - 1, 1.0))[:3]
    assert np.all(lo <= np.array([-71, -107, -85]) - 10)
    assert np.all(hi >= np.array([71, 73, 81]) + 8)
