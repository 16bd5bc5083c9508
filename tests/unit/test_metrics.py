"""Metrics against hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tumorlens.evaluation import metrics

# y_true / y_pred for 3 classes; confusion matrix worked out by hand:
#            pred 0  1  2
#   true 0       1  1  0
#   true 1       0  2  0
#   true 2       1  0  1
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]


def test_confusion_matrix_rows_are_truth() -> None:
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics.accuracy(cm) == pytest.approx(4 / 6)


def test_confusion_matrix_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        metrics.confusion_matrix([0, 3], [0, 1], 3)


def test_class_rates_by_hand() -> None:
    rates = metrics.class_rates(metrics.confusion_matrix(Y_TRUE, Y_PRED, 3))
    # class 0: TP 1 FN 1 FP 1 TN 3; class 1: TP 2 FN 0 FP 1 TN 3; class 2: TP 1 FN 1 FP 0 TN 4
    assert rates.support.tolist() == [2, 2, 2]
    np.testing.assert_allclose(rates.sensitivity, [0.5, 1.0, 0.5])
    np.testing.assert_allclose(rates.specificity, [0.75, 0.75, 1.0])
    np.testing.assert_allclose(rates.precision, [0.5, 2 / 3, 1.0])
    np.testing.assert_allclose(rates.f1, [0.5, 0.8, 2 / 3])


def test_undefined_rates_are_nan() -> None:
    # Class 2 never occurs and is never predicted: its sensitivity, precision and F1 are 0/0.
    rates = metrics.class_rates(metrics.confusion_matrix([0, 1], [0, 1], 3))
    assert math.isnan(rates.sensitivity[2])
    assert math.isnan(rates.precision[2])
    assert math.isnan(rates.f1[2])
    assert rates.specificity[2] == 1.0


def test_kappa_by_hand() -> None:
    # p_o = 4/6, p_e = (2*2 + 2*3 + 2*1) / 36 = 1/3 -> kappa = (1/3) / (2/3) = 0.5
    assert metrics.cohen_kappa(metrics.confusion_matrix(Y_TRUE, Y_PRED, 3)) == pytest.approx(0.5)
    # Textbook 2x2: p_o = 0.7, p_e = 0.5 -> 0.4
    assert metrics.cohen_kappa(np.array([[20, 5], [10, 15]])) == pytest.approx(0.4)
    assert metrics.cohen_kappa(np.array([[5, 0], [0, 5]])) == pytest.approx(1.0)


def test_kappa_undefined_for_single_class() -> None:
    assert math.isnan(metrics.cohen_kappa(np.array([[4, 0], [0, 0]])))
    assert math.isnan(metrics.cohen_kappa(np.zeros((2, 2), dtype=np.int64)))


def test_midranks_share_tied_ranks() -> None:
    np.testing.assert_allclose(metrics.midranks([30, 10, 20, 20]), [4.0, 1.0, 2.5, 2.5])
    np.testing.assert_allclose(metrics.midranks([7, 7, 7]), [2.0, 2.0, 2.0])


def test_auc_without_ties() -> None:
    # Pairs (pos, neg): (.35,.1) win, (.35,.4) loss, (.8,.1) win, (.8,.4) win -> 3/4
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auc_with_ties_counts_half() -> None:
    # pos {0.8, 0.5}, neg {0.5, 0.2}: 1 + 1 + 0.5 (tie) + 1 = 3.5 of 4 pairs
    assert metrics.roc_auc([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert metrics.roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)


def test_auc_matches_pairwise_count_on_heavily_tied_scores() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=60).astype(float)
    positive = rng.random(60) < 0.4
    pos, neg = scores[positive], scores[~positive]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert metrics.roc_auc(scores, positive) == pytest.approx(wins / (pos.size * neg.size))


def test_auc_undefined_without_both_classes() -> None:
    assert math.isnan(metrics.roc_auc([0.1, 0.9], [1, 1]))


def test_roc_curve_area_equals_auc() -> None:
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 6, size=80).astype(float)
    positive = rng.random(80) < 0.5
    fpr, tpr = metrics.roc_curve(scores, positive)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(metrics.roc_auc(scores, positive))


def test_one_vs_rest_and_macro_auc() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    y_true = np.array([0, 0, 1, 1])  # class 2 absent -> its AUC is nan, macro skips it
    aucs = metrics.one_vs_rest_auc(y_true, probs)
    assert aucs[0] == pytest.approx(1.0)
    # class 1 scores: pos {0.7, 0.3}, neg {0.1, 0.3}: 1 + 1 + 1 + 0.5 -> 3.5/4
    assert aucs[1] == pytest.approx(0.875)
    assert math.isnan(aucs[2])
    assert metrics.macro(aucs) == pytest.approx((1.0 + 0.875) / 2)


def test_softmax_is_stable_and_normalised() -> None:
    probs = metrics.softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]])


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Newcombe (1998), Stat Med 17:857, Table II, method 3 (Wilson score, no correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(
    successes: int, n: int, low: float, high: float
) -> None:
    lo, hi = metrics.wilson_interval(successes, n)
    assert (lo, hi) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


def test_wilson_interval_of_nothing_is_undefined_and_impossible_counts_are_refused() -> None:
    assert all(math.isnan(v) for v in metrics.wilson_interval(0, 0))
    with pytest.raises(ValueError, match=r"not in 0\.\.5"):
        metrics.wilson_interval(6, 5)


def test_bootstrap_interval_is_seeded_brackets_the_mean_and_matches_the_normal_one() -> None:
    x = np.random.default_rng(1).standard_normal(1000)
    low, high = metrics.bootstrap_mean_interval(x)
    assert low < x.mean() < high
    assert metrics.bootstrap_mean_interval(x) == (low, high)  # same seed, same interval
    # n = 1000 draws of N(0, 1): the mean's 95% interval is about +- 1.96 / sqrt(1000)
    half = 1.959964 * x.std(ddof=1) / np.sqrt(x.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_bootstrap_interval_of_constant_and_of_nothing() -> None:
    assert metrics.bootstrap_mean_interval([0.8] * 5) == (pytest.approx(0.8), pytest.approx(0.8))
    assert metrics.bootstrap_mean_interval([0.8, float("nan"), 0.8]) == (
        pytest.approx(0.8),
        pytest.approx(0.8),
    )
    assert all(math.isnan(v) for v in metrics.bootstrap_mean_interval([float("nan")]))
