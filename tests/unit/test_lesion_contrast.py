"""``python -m tumorlens_train.lesion_contrast``: lesion z-scores of a training cache and of a
real case (the service's alignment, brain extraction and preprocessing, the shipped model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch (training extra) not installed")

from tumorlens_train.lesion_contrast import case_table, main


def test_lesion_contrast_table_reads_a_cache(tmp_path: Path) -> None:
    """Per type and label, percentiles over cases of the label's mean z; small labels skipped."""
    from tumorlens_train.lesion_contrast import cache_table
    from tumorlens_train.nets3d import TYPE_CLASSES

    folder = tmp_path / "grid-abc"
    folder.mkdir()
    lgg = TYPE_CLASSES.index("lgg")
    for i, flair in enumerate((1.0, 2.0, 3.0)):
        image = np.zeros((4, 8, 8, 8), np.float16)
        labels = np.zeros((8, 8, 8), np.uint8)
        labels[:4] = 1  # 256 core voxels
        labels[7, 7, 7] = 2  # one oedema voxel: below the 20-voxel floor
        image[3][labels == 1] = flair
        np.savez(folder / f"case{i}.npz", image=image, labels=labels, type_index=lgg, info="{}")
    table = cache_table(tmp_path)
    assert list(table) == ["lgg core"]
    assert table["lgg core"]["cases"] == 3
    assert table["lgg core"]["flair"] == [1.2, 2.0, 2.8]
    assert table["lgg core"]["t1"] == [0.0, 0.0, 0.0]
    assert main([str(tmp_path)]) == 0
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty")])


def test_real_case_lesion_is_found_after_motion_correction(shared_data: Path) -> None:
    """TCGA-FG-6692's T1 and FLAIR moved against T1c; aligned as the service aligns them, the
    shipped model labels the right frontal lesion and it is FLAIR-bright."""
    folder = shared_data / "cases" / "TCGA-FG-6692"
    if not folder.is_dir():
        pytest.skip(f"real case not found at {folder}")
    repo = Path(__file__).resolve().parents[2]
    table = case_table(folder, repo / "models/tumorlens_zoo/tumour3d.json")
    assert table["alignment"]["t1ce"] == "reference"
    assert table["alignment"]["flair"] == "frame of reference, motion corrected"
    assert sum(table["grid_voxels"].values()) > 100
    assert table["flair"]["mean"] > 1.0  # brighter than nearly all brain (z in the mask)
    assert table["t1ce_minus_t1"]["p99"]["threshold"] > 0.0


def test_enhancement_counts_tumour_brighter_on_t1ce_than_t1_beyond_normal_brain() -> None:
    from tumorlens.inference.preprocess3d import SEQUENCES
    from tumorlens_train.lesion_contrast import enhancement

    rng = np.random.default_rng(0)
    shape = (40, 40, 40)
    image = rng.normal(0.0, 0.1, (len(SEQUENCES), *shape)).astype(np.float32)
    brain = np.zeros(shape, bool)
    brain[2:38, 2:38, 2:38] = True
    labels = np.zeros(shape, np.uint8)
    labels[5:11, 5:11, 5:11] = 1  # 216 voxels of tumour, 27 of them taking up contrast
    labels[5:8, 5:8, 5:8] = 3
    t1, t1ce = SEQUENCES.index("t1"), SEQUENCES.index("t1ce")
    image[t1ce, 5:8, 5:8, 5:8] += 2.0
    image[t1, 8:11, 8:11, 8:11] -= 2.0  # dark on T1 and on T1c alike: no uptake
    image[t1ce, 8:11, 8:11, 8:11] -= 2.0
    image[t1ce, 2:4] += 5.0  # dura at the brain's edge, inside the mask: not "normal" brain
    out = enhancement(image, labels, brain, spacing=2.0)
    # the 27 voxels with uptake, plus the noise tail of the other 189 (1 % of them expected)
    assert 27 * 8 / 1000 <= out["p99"]["tumour_ml_above"] <= 33 * 8 / 1000
    assert out["p99"]["enhancing_label_ml_above"] == pytest.approx(27 * 8 / 1000)
    assert out["enhancing_label_ml"] == pytest.approx(27 * 8 / 1000)
    assert out["p99"]["threshold"] < 1.0  # the bright edge did not set the threshold
    assert abs(out["normal_median"]) < 0.05
