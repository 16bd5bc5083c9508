"""Classification metrics in pure numpy: confusion matrix, per-class rates, one-vs-rest ROC AUC
(rank based, ties counted as one half), Cohen's kappa, Wilson intervals for proportions and
bootstrap intervals for means.

Undefined values (a class with no positives, a zero denominator) are ``nan``, never a made-up
0 or 1; the report layer turns them into ``null``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> IntArray:
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as ``j``."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in shape")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class ClassRates:
    """Per-class one-vs-rest rates, each an array indexed by class."""

    support: IntArray
    sensitivity: FloatArray  # recall, true positive rate
    specificity: FloatArray  # true negative rate
    precision: FloatArray  # positive predictive value
    f1: FloatArray


def class_rates(cm: IntArray) -> ClassRates:
    cm64 = cm.astype(np.float64)
    tp = np.diag(cm64)
    fn = cm64.sum(axis=1) - tp
    fp = cm64.sum(axis=0) - tp
    tn = cm64.sum() - tp - fn - fp
    sensitivity = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp)
    return ClassRates(
        support=cm.sum(axis=1).astype(np.int64),
        sensitivity=sensitivity,
        specificity=_ratio(tn, tn + fp),
        precision=precision,
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
    )


def accuracy(cm: IntArray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


# two-sided 95 % normal quantile
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (nan, nan when ``n`` is 0).

    Wilson rather than the normal approximation because the proportions here sit near 1
    (accuracy 0.97 on ~800 images), where ``p +- z sqrt(p(1-p)/n)`` runs past 1 and is too
    narrow. It treats the images as independent draws; slices of one patient are not, so the
    true uncertainty is wider still.
    """
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} not in 0..{n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_mean_interval(
    values: ArrayLike, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (cases resampled with
    replacement; nan values dropped first; nan, nan when none is left).

    For per-case means such as Dice over 48 phantoms, whose distribution is skewed and
    bounded, where a normal interval would run past 1. Seeded, so a report is reproducible.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def midranks(values: ArrayLike) -> FloatArray:
    """1-based ranks with tied values sharing the mean of their ranks."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # Start index of each run of equal values, and its length.
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    lengths = np.diff(np.r_[starts, v.size])
    run_rank = starts + (lengths + 1) / 2.0
    ranks = np.empty(v.size)
    ranks[order] = np.repeat(run_rank, lengths)
    return ranks


def roc_auc(scores: ArrayLike, positive: ArrayLike) -> float:
    """Binary ROC AUC by the Mann-Whitney U statistic: P(score+ > score-) + 0.5 P(tie).

    ``nan`` when either class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(midranks(s)[pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def one_vs_rest_auc(y_true: ArrayLike, probs: ArrayLike) -> FloatArray:
    """AUC of ``probs[:, k]`` for class ``k`` against all others, per class."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.int64)
    return np.array([roc_auc(p[:, k], t == k) for k in range(p.shape[1])])


def macro(values: FloatArray) -> float:
    """Mean over classes where the value is defined; ``nan`` if none is."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def roc_curve(scores: ArrayLike, positive: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """ROC points ``(fpr, tpr)`` from (0, 0) to (1, 1), one per distinct threshold."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    # Only the last index of each group of tied scores is a threshold.
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1] if s.size else np.array([], int)
    tps = np.cumsum(pos)[last].astype(np.float64)
    fps = (last + 1 - tps).astype(np.float64)
    n_pos, n_neg = float(pos.sum()), float(pos.size - pos.sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.r_[0.0, np.full(tps.size, np.nan)]
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.r_[0.0, np.full(fps.size, np.nan)]
    return fpr, tpr


def cohen_kappa(cm: IntArray) -> float:
    """Cohen's kappa: (p_o - p_e) / (1 - p_e) with chance agreement from the marginals.

    ``nan`` when chance agreement is 1 (one class on both sides): kappa is undefined there.
    """
    total = float(cm.sum())
    if total == 0:
        return float("nan")
    p_o = float(np.trace(cm)) / total
    p_e = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / total**2
    if p_e >= 1.0:
        return float("nan")
    return (p_o - p_e) / (1.0 - p_e)


def softmax(logits: ArrayLike) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out
