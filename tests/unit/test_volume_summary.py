"""The volume evaluation summary against hand-computed means."""

from __future__ import annotations

import math

import pytest

from tumorlens.evaluation.volumes import CaseResult, VolumeReport, format_volume_table, summarise

TYPES = ("healthy", "hgg", "lgg")


def _case(case_id: str, ttype: str, dice: tuple[float, float, float], predicted: str) -> CaseResult:
    hd = {r: (math.nan if d == 0.0 else 2.0) for r, d in zip(("WT", "TC", "ET"), dice, strict=True)}
    grade = {"hgg": "HGG", "lgg": "LGG"}.get(ttype)
    p_hgg = 0.8 if ttype == "hgg" else 0.3
    return CaseResult(
        case_id,
        dict(zip(("WT", "TC", "ET"), dice, strict=True)),
        hd,
        grade,
        ttype,
        predicted,
        p_hgg,
        1.0,
    )


def test_summary_by_type_and_over_tumour_cases() -> None:
    results = [
        _case("h1", "healthy", (1.0, 1.0, 1.0), "healthy"),
        _case("h2", "healthy", (0.0, 0.0, 0.0), "lgg"),  # a false positive on a healthy brain
        _case("g1", "hgg", (0.9, 0.8, 0.7), "hgg"),
        _case("l1", "lgg", (0.8, 0.6, 0.0), "lgg"),
    ]
    s = summarise(results, TYPES)
    assert s["dice_WT"] == pytest.approx((1.0 + 0.0 + 0.9 + 0.8) / 4)
    assert s["dice_ET_tumour_cases"] == pytest.approx((0.7 + 0.0) / 2)
    assert s["hd95_ET_undefined"] == 2
    assert s["dice_by_type"]["healthy"] == {"n": 2, "WT": 0.5, "TC": 0.5, "ET": 0.5}
    assert s["dice_by_type"]["lgg"]["TC"] == pytest.approx(0.6)
    assert s["type_accuracy"] == pytest.approx(3 / 4)
    assert s["grade_n"] == 2 and s["grade_auc"] == pytest.approx(1.0)
    # intervals: Dice bootstrapped over the four cases, type accuracy Wilson (3 of 4)
    low, high = s["dice_WT_ci95"]
    assert 0.0 <= low < s["dice_WT"] < high <= 1.0
    assert s["type_accuracy_ci95"] == [
        pytest.approx(0.3006, abs=1e-4),
        pytest.approx(0.9544, abs=1e-4),
    ]
    table = format_volume_table(VolumeReport("m.onnx", 4, 0, [], results, s))
    assert "healthy (n=2): Dice WT/TC/ET 0.500 / 0.500 / 0.500" in table
    assert f"{low:.3f}-{high:.3f}" in table
    assert "type accuracy (n=4): 0.750 (95% CI 0.301-0.954, Wilson)" in table
