"""Boundary refinement (tumorlens.inference.refine) and the card's segmentation logit offsets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tumorlens.errors import VolumeError
from tumorlens.evaluation.seg_metrics import dice
from tumorlens.inference.preprocess3d import softmax
from tumorlens.inference.refine import (
    MIN_SAMPLES,
    BoundaryRefinement,
    linear_discriminant,
    refine_boundary,
    refine_labels,
)
from tumorlens.inference.volume_model import labels_on_native, seg_logit_offsets, seg_probabilities

SPACING = np.ones(3)


def _ball(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    return distance


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_linear_discriminant_is_fishers_and_needs_enough_voxels() -> None:
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    a = rng.multivariate_normal([2.0, 1.0], cov, size=4000)
    b = rng.multivariate_normal([0.0, 0.0], cov, size=4000)
    features = np.concatenate([a, b]).T.reshape(2, 80, 100).astype(np.float32)
    inside = np.zeros((80, 100), bool)
    inside[:40] = True
    weights, offset = linear_discriminant(features, inside, ~inside)  # type: ignore[misc]
    expected = np.linalg.solve(cov, [2.0, 1.0])
    np.testing.assert_allclose(weights, expected, rtol=0.08, atol=0.05)
    # The midpoint of the two means is the equal-odds point.
    assert weights @ np.array([1.0, 0.5]) + offset == pytest.approx(0.0, abs=0.1)
    few = np.zeros_like(inside)
    few[0, : MIN_SAMPLES - 1] = True
    assert linear_discriminant(features, few, ~inside) is None


def test_a_blurred_model_boundary_is_redrawn_where_the_image_shows_it() -> None:
    """The model's probability is a smooth ball 2 voxels too big; the image shows the true
    ball. Refinement moves the boundary onto it and leaves the voxels the model is sure of."""
    shape = (40, 40, 40)
    distance = _ball(shape, (20, 20, 20), 0)
    truth = distance <= 9
    p_model = _sigmoid((11.0 - distance) / 1.2).astype(np.float32)
    rng = np.random.default_rng(1)
    image = (truth * 1.0 + rng.normal(0, 0.2, shape))[None].astype(np.float32)
    before = p_model > 0.5
    settings = BoundaryRefinement(strength=8.0)
    after = refine_boundary(p_model, image, np.ones(shape, bool), SPACING, settings)
    assert dice(after, truth) > dice(before, truth) + 0.1
    assert dice(after, truth) > 0.95
    sure = (p_model > 1 - settings.uncertain) | (p_model < settings.uncertain)
    np.testing.assert_array_equal(after[sure], before[sure])
    # An image that says nothing (pure noise) leaves the model's boundary nearly as it was.
    noise = rng.normal(0, 1, (1, *shape)).astype(np.float32)
    unchanged = refine_boundary(p_model, noise, np.ones(shape, bool), SPACING, settings)
    assert dice(unchanged, before) > 0.9


def test_refined_labels_nest_enhancing_in_core_in_whole_tumour() -> None:
    shape = (36, 36, 36)
    distance = _ball(shape, (18, 18, 18), 0)
    truth = np.zeros(shape, np.uint8)
    truth[distance <= 13] = 2
    truth[distance <= 9] = 3
    truth[distance <= 4] = 1  # necrotic centre inside an enhancing rim
    signal = {0: (1.0, 0.4), 2: (0.55, 0.95), 3: (1.5, 0.75), 1: (0.3, 0.45)}  # (t1ce, flair)
    rng = np.random.default_rng(2)
    image = np.zeros((2, *shape), np.float32)
    for label, values in signal.items():
        for c, v in enumerate(values):
            image[c][truth == label] = v
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    # Model: the right regions with soft, 1.5-voxel-too-big boundaries. (A rim thinner than
    # the model's blur has no voxel the model is sure is enhancing: then it stays as it was.)
    p_wt = _sigmoid((14.5 - distance) / 1.0)
    p_tc = _sigmoid((10.5 - distance) / 1.0)
    p_nc = _sigmoid((5.5 - distance) / 1.0)
    probs = np.stack(
        [1 - p_wt, p_wt * p_tc * p_nc, p_wt * (1 - p_tc), p_wt * p_tc * (1 - p_nc)]
    ).astype(np.float32)
    labels = refine_labels(probs, image, SPACING, BoundaryRefinement(strength=8.0))
    whole, core, enhancing = labels > 0, np.isin(labels, (1, 3)), labels == 3
    plain = probs.argmax(axis=0)
    for region, values in (("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,))):
        got = dice(np.isin(labels, values), np.isin(truth, values))
        was = dice(np.isin(plain, values), np.isin(truth, values))
        assert got > was, region
        assert got > 0.93, region
    assert not (core & ~whole).any() and not (enhancing & ~core).any()


def test_labels_on_native_with_refinement_touches_only_the_tumours_neighbourhood() -> None:
    grid = np.diag([3.0, 3.0, 3.0, 1.0])
    native = np.diag([1.0, 1.0, 1.0, 1.0])
    # Oedema as a smooth blob on the 3 mm grid, p > 0.5 within 7 mm of native (28.5, ...).
    radius_mm = 3.0 * _ball((20, 20, 20), (9.5, 9.5, 9.5), 0)
    p_oedema = _sigmoid((7.0 - radius_mm) / 1.0)
    probs = np.stack([1 - p_oedema, 0 * p_oedema, p_oedema, 0 * p_oedema]).astype(np.float32)
    shape = (60, 60, 60)
    distance = _ball(shape, (28.5, 28.5, 28.5), 0)
    image = (distance <= 5).astype(np.float32) + np.random.default_rng(3).normal(0, 0.1, shape)
    images = {"flair": (image.astype(np.float32), native)}
    plain = labels_on_native(probs, grid, native, shape)
    refined = labels_on_native(
        probs, grid, native, shape, refinement=BoundaryRefinement(8.0), images=images
    )
    truth = distance <= 5
    assert dice(refined > 0, truth) > dice(plain > 0, truth)
    far = ndimage.distance_transform_edt(plain == 0) > 6
    assert not refined[far].any()
    # Without images the refinement cannot run: the plain labels come back.
    same = labels_on_native(probs, grid, native, shape, refinement=BoundaryRefinement(8.0))
    np.testing.assert_array_equal(same, plain)


def test_refinement_settings_from_the_card() -> None:
    assert BoundaryRefinement.from_card({}, "card") is None
    assert BoundaryRefinement.from_card({"postprocessing": {}}, "card") is None
    card = {"postprocessing": {"boundary_refinement": {"strength": 0}}}
    assert BoundaryRefinement.from_card(card, "card") is None  # strength 0: off
    card = {"postprocessing": {"boundary_refinement": {"strength": 8, "sample_band_mm": 3}}}
    settings = BoundaryRefinement.from_card(card, "card")
    assert settings == BoundaryRefinement(8.0, sample_band_mm=3.0)
    assert (
        BoundaryRefinement.from_card(
            {"postprocessing": {"boundary_refinement": settings.to_dict()}}, "card"
        )
        == settings
    )  # type: ignore[union-attr]
    for bad in ({}, {"strength": "x"}, {"strength": -1}, {"strength": 1, "confident": 0.4}):
        with pytest.raises(VolumeError, match=r"my\.json: postprocessing\.boundary_refinement"):
            BoundaryRefinement.from_card(
                {"postprocessing": {"boundary_refinement": bad}}, "my.json"
            )


def test_seg_logit_offsets_shift_the_softmax_and_malformed_ones_are_refused() -> None:
    assert seg_logit_offsets({}, "c") is None
    offsets = seg_logit_offsets({"postprocessing": {"seg_logit_offsets": [1, 0, 0, -0.5]}}, "c")
    assert offsets is not None
    logits = np.random.default_rng(4).normal(size=(4, 3, 3, 3)).astype(np.float32)
    shifted = logits + np.array([1, 0, 0, -0.5], np.float32)[:, None, None, None]
    np.testing.assert_allclose(seg_probabilities(logits, offsets), softmax(shifted, axis=0))
    np.testing.assert_allclose(seg_probabilities(logits, None), softmax(logits, axis=0))
    for bad in ([1, 2, 3], ["a", 0, 0, 0], [0, 0, 0, float("nan")], 5):
        with pytest.raises(VolumeError, match=r"c\.json: postprocessing\.seg_logit_offsets"):
            seg_logit_offsets({"postprocessing": {"seg_logit_offsets": bad}}, "c.json")


def test_refinement_never_adds_a_region_the_model_did_not_find() -> None:
    """A second bright blob where the model is unsure (p 0.3) and a T1c-bright spot inside a
    core the model calls non-enhancing: the discriminant would take both, the anchor refuses
    both (0.7.2 had a 0.7 mL 'lesion' of this kind on the real case)."""
    shape = (40, 40, 40)
    lesion = _ball(shape, (14, 20, 20), 0)
    other = _ball(shape, (30, 20, 20), 0)
    rng = np.random.default_rng(5)
    flair = (lesion <= 6) * 1.0 + (other <= 3) * 1.0 + rng.normal(0, 0.1, shape)
    t1ce = (lesion <= 2) * 1.0 + rng.normal(0, 0.1, shape)  # bright spot, core centre
    image = np.stack([flair, t1ce]).astype(np.float32)
    p_wt = np.maximum(_sigmoid((7.0 - lesion) / 1.0), 0.3 * (other <= 4))
    # Inside the lesion: core (no enhancement by argmax: P(enh) < P(core) everywhere).
    p_core_given_wt = _sigmoid((4.0 - lesion) / 1.0)
    probs = np.stack(
        [
            1 - p_wt,
            p_wt * p_core_given_wt * 0.6,
            p_wt * (1 - p_core_given_wt),
            p_wt * p_core_given_wt * 0.4,
        ]
    ).astype(np.float32)
    assert not (probs.argmax(axis=0) == 3).any()
    labels = refine_labels(probs, image, SPACING, BoundaryRefinement(strength=8.0))
    assert not labels[other <= 3].any()  # no second lesion
    assert not (labels == 3).any()  # no enhancing focus
    assert dice(labels > 0, lesion <= 6) > 0.9  # the lesion's own boundary is still redrawn
    # Without the anchor the same discriminant does take the blob: the test has teeth.
    p_whole = (1 - probs[0]).astype(np.float32)
    free = refine_boundary(p_whole, image, np.ones(shape, bool), SPACING, BoundaryRefinement(8.0))
    assert free[other <= 2].all()


def _slice_components(mask: np.ndarray) -> int:
    return sum(
        ndimage.label(mask[:, :, z], structure=np.ones((3, 3)))[1] for z in range(mask.shape[2])
    )


def test_max_shift_caps_how_far_a_boundary_moves_and_smoothing_removes_speckle() -> None:
    shape = (44, 44, 44)
    distance = _ball(shape, (22, 22, 22), 0)
    truth = distance <= 7
    p_model = _sigmoid((11.0 - distance) / 1.5).astype(np.float32)  # 4 voxels too big
    rng = np.random.default_rng(6)
    image = (truth * 1.0 + rng.normal(0, 0.6, shape))[None].astype(np.float32)  # noisy
    everywhere = np.ones(shape, bool)
    model = p_model > 0.5
    capped = refine_boundary(
        p_model, image, everywhere, SPACING, BoundaryRefinement(8.0, max_shift_mm=2.0)
    )
    depth = ndimage.distance_transform_edt(model)
    reach = ndimage.distance_transform_edt(~model)
    far = np.where(model, depth, reach) > 2.0
    np.testing.assert_array_equal(capped[far], model[far])
    assert not np.array_equal(capped, model)
    raw = refine_boundary(p_model, image, everywhere, SPACING, BoundaryRefinement(8.0))
    smooth = refine_boundary(
        p_model, image, everywhere, SPACING, BoundaryRefinement(8.0, smoothing_mm=1.5)
    )
    assert _slice_components(smooth) < _slice_components(raw)
    assert dice(smooth, truth) > dice(model, truth)


def test_refinement_settings_round_trip_with_smoothing_and_cap() -> None:
    settings = BoundaryRefinement(4.0, smoothing_mm=1.5, max_shift_mm=3.0)
    card = {"postprocessing": {"boundary_refinement": settings.to_dict()}}
    assert BoundaryRefinement.from_card(card, "c") == settings
    uncapped = BoundaryRefinement(4.0).to_dict()
    assert "max_shift_mm" not in uncapped  # no infinity in JSON: absent means no cap
    card = {"postprocessing": {"boundary_refinement": uncapped}}
    assert BoundaryRefinement.from_card(card, "c") == BoundaryRefinement(4.0)
    for bad in ({"strength": 1, "smoothing_mm": -1}, {"strength": 1, "max_shift_mm": 0}):
        with pytest.raises(VolumeError):
            BoundaryRefinement.from_card({"postprocessing": {"boundary_refinement": bad}}, "c")


@pytest.mark.parametrize("smoothing_mm", [0.0, 1.5])
def test_refining_in_the_domains_box_equals_the_whole_grid(smoothing_mm: float) -> None:
    """The cropped route (refine_boundary) against the same maths on the whole grid, for a
    sub-boundary whose domain is a small part of it, on an anisotropic grid."""
    from tumorlens.inference.refine import _refine_boundary_in_box

    shape = (48, 40, 24)
    spacing = np.array([1.0, 1.0, 2.5])
    grid = np.indices(shape, dtype=np.float64) * spacing[:, None, None, None]
    distance = np.sqrt(((grid - np.array([20.0, 18.0, 30.0])[:, None, None, None]) ** 2).sum(0))
    rng = np.random.default_rng(7)
    features = np.stack(
        [(distance < 6) + rng.normal(0, 0.4, shape), rng.normal(0, 1, shape)]
    ).astype(np.float32)
    p_inside = _sigmoid((8.0 - distance) / 1.5).astype(np.float32)
    domain = distance < 13
    anchor = distance < 3
    settings = BoundaryRefinement(8.0, smoothing_mm=smoothing_mm, max_shift_mm=3.0)
    boxed = refine_boundary(p_inside, features, domain, spacing, settings, anchor=anchor)
    whole = _refine_boundary_in_box(p_inside, features, domain, spacing, settings, anchor=anchor)
    np.testing.assert_array_equal(boxed, whole)
    assert boxed.any() and not np.array_equal(boxed, p_inside > 0.5)
    assert not refine_boundary(p_inside, features, np.zeros(shape, bool), spacing, settings).any()


def test_fragments_count_2d_components_per_slice() -> None:
    from tumorlens_train.boundary_review import fragments

    labels = np.zeros((20, 20, 3), np.uint8)
    labels[2:8, 2:8, 0] = 2  # slice 0: one oedema blob ...
    labels[4:6, 4:6, 0] = 1  # ... with a core inside: WT 1, TC 1
    labels[12, 12, 0] = 4  # a separate enhancing speck (BraTS label): WT 2, TC 2
    labels[1, 1, 1] = labels[2, 2, 1] = 2  # diagonal neighbours: one 8-connected component
    assert fragments(labels) == {"WT": 3, "TC": 2}
