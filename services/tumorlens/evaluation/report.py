"""The evaluation report: metrics from predictions, as JSON and as a printed table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tumorlens.evaluation import metrics
from tumorlens.inference.card import ModelCard


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    snomed_code: str
    support: int
    sensitivity: float
    sensitivity_ci95: tuple[float, float]  # Wilson, images taken as independent
    specificity: float
    precision: float
    f1: float
    auc: float


@dataclass(frozen=True)
class SliceReport:
    model: dict[str, str]
    n_images: int
    accuracy: float
    accuracy_ci95: tuple[float, float]  # Wilson, images taken as independent
    per_class: tuple[ClassMetrics, ...]
    macro_auc: float
    kappa: float
    ms_per_image: float
    ms_per_image_preprocess: float
    labels: tuple[str, ...]
    confusion_matrix: list[list[int]]
    skipped: tuple[Skipped, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; undefined metrics become ``null``."""
        return {
            "model": self.model,
            "n_images": self.n_images,
            "accuracy": _num(self.accuracy),
            "accuracy_ci95": [_num(v) for v in self.accuracy_ci95],
            "per_class": {
                c.name: {
                    "snomed_ct": c.snomed_code,
                    "support": c.support,
                    "sensitivity": _num(c.sensitivity),
                    "sensitivity_ci95": [_num(v) for v in c.sensitivity_ci95],
                    "specificity": _num(c.specificity),
                    "precision": _num(c.precision),
                    "f1": _num(c.f1),
                    "auc": _num(c.auc),
                }
                for c in self.per_class
            },
            "macro_auc": _num(self.macro_auc),
            "kappa": _num(self.kappa),
            "ms_per_image": round(self.ms_per_image, 3),
            "ms_per_image_preprocess": round(self.ms_per_image_preprocess, 3),
            "labels": list(self.labels),
            "confusion_matrix": self.confusion_matrix,
            "skipped": {
                "count": len(self.skipped),
                "files": [{"file": s.file, "reason": s.reason} for s in self.skipped],
            },
        }


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def build_report(
    card: ModelCard,
    y_true: NDArray[np.int64],
    logits: NDArray[np.float32],
    *,
    skipped: list[Skipped],
    inference_seconds: float,
    preprocess_seconds: float,
) -> SliceReport:
    k = len(card.labels)
    probs = metrics.softmax(logits)
    cm = metrics.confusion_matrix(y_true, probs.argmax(axis=1), k)
    rates = metrics.class_rates(cm)
    aucs = metrics.one_vs_rest_auc(y_true, probs)
    n = int(y_true.size)
    return SliceReport(
        model={"name": card.name, "version": card.version, "sha256": card.sha256},
        n_images=n,
        accuracy=metrics.accuracy(cm),
        accuracy_ci95=metrics.wilson_interval(int(np.trace(cm)), n),
        per_class=tuple(
            ClassMetrics(
                name=lb.name,
                snomed_code=lb.snomed_code,
                support=int(rates.support[lb.index]),
                sensitivity=float(rates.sensitivity[lb.index]),
                sensitivity_ci95=metrics.wilson_interval(
                    int(cm[lb.index, lb.index]), int(rates.support[lb.index])
                ),
                specificity=float(rates.specificity[lb.index]),
                precision=float(rates.precision[lb.index]),
                f1=float(rates.f1[lb.index]),
                auc=float(aucs[lb.index]),
            )
            for lb in card.labels
        ),
        macro_auc=metrics.macro(aucs),
        kappa=metrics.cohen_kappa(cm),
        ms_per_image=1000.0 * inference_seconds / n,
        ms_per_image_preprocess=1000.0 * preprocess_seconds / n,
        labels=card.label_names,
        confusion_matrix=cm.tolist(),
        skipped=tuple(skipped),
    )


def _fmt(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.4f}"


def format_interval(ci: tuple[float, float] | list[float]) -> str:
    """``low-high`` to 3 decimals, ``n/a`` when undefined (the evaluation tables' intervals)."""
    return "n/a" if math.isnan(ci[0]) else f"{ci[0]:.3f}-{ci[1]:.3f}"


def format_table(report: SliceReport) -> str:
    """A plain-text summary for the terminal."""
    width = max(len(c.name) for c in report.per_class)
    lines = [
        f"model {report.model['name']} {report.model['version']}  images {report.n_images}  "
        f"skipped {len(report.skipped)}",
        f"{'class':<{width}}  support  sens.   (95% CI)     spec.   prec.   F1      AUC",
    ]
    lines += [
        f"{c.name:<{width}}  {c.support:7d}  {_fmt(c.sensitivity)}  "
        f"{format_interval(c.sensitivity_ci95):>11}  {_fmt(c.specificity)}  "
        f"{_fmt(c.precision)}  {_fmt(c.f1)}  {_fmt(c.auc)}"
        for c in report.per_class
    ]
    lines += [
        f"accuracy {_fmt(report.accuracy)} "
        f"(95% CI {format_interval(report.accuracy_ci95)}, Wilson, images taken as independent)  "
        f"macro AUC {_fmt(report.macro_auc)}  "
        f"kappa {_fmt(report.kappa)}",
        f"inference {report.ms_per_image:.2f} ms/image  "
        f"(+ {report.ms_per_image_preprocess:.2f} ms/image decode and preprocessing)",
        "confusion matrix (rows: true, columns: predicted)",
        " " * (width + 2) + " ".join(f"{name[:8]:>8}" for name in report.labels),
    ]
    lines += [
        f"{name:<{width}}  " + " ".join(f"{v:8d}" for v in row)
        for name, row in zip(report.labels, report.confusion_matrix, strict=True)
    ]
    return "\n".join(lines)
