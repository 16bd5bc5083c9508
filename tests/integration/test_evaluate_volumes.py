"""``tumorlens evaluate volumes`` end to end on the shipped 3D model and three small generated
phantoms (4 mm, so generation takes ~1 s), plus one broken case that must be skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tumorlens.cli import main

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "models/tumorlens_zoo"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ZOO / "tumour3d.onnx").is_file():
        pytest.skip("shipped model models/tumorlens_zoo/tumour3d.onnx not built")
    pytest.importorskip("nilearn", reason="phantom generation needs the template (nilearn)")
    from tumorlens_train.phantoms import PhantomConfig, generate_case, write_case, write_index

    root = tmp_path_factory.mktemp("volumes")
    config = PhantomConfig(spacing=4.0, thick_slice_prob=0.0)
    metas = [
        write_case(generate_case(900_000 + i, ttype, config), root, f"case_{i}")
        for i, ttype in enumerate(("hgg", "lgg", "meningioma"))
    ]
    write_index(root, metas)
    # A broken copy: FLAIR truncated so it cannot be read.
    shutil.copytree(root / "case_0", root / "broken")
    for path in (root / "broken").iterdir():
        path.rename(path.with_name(path.name.replace("case_0", "broken")))
    flair = root / "broken" / "broken_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:200])
    return root


def test_evaluate_volumes_end_to_end(
    cases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "metrics.json"
    plots = tmp_path / "plots"
    rc = main(
        [
            "evaluate",
            "volumes",
            str(cases),
            "--json",
            str(out_json),
            "--plots",
            str(plots),
            "--threads",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "3 cases, 1 skipped" in captured.out
    assert "broken_flair.nii.gz" in captured.out  # the message names the file

    report = json.loads(out_json.read_text())
    assert report["n_cases"] == 3 and report["n_skipped"] == 1
    summary = report["summary"]
    for key in ("dice_WT", "dice_TC", "dice_ET", "hd95_WT_mm", "type_accuracy", "grade_auc"):
        assert key in summary
    for key in ("dice_WT", "dice_TC", "dice_ET"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["grade_n"] == 2
    assert {c["tumour_type"] for c in report["cases"]} == {"hgg", "lgg", "meningioma"}
    card = json.loads((ZOO / "tumour3d.json").read_text())
    if card["inputs"][0]["grid"].get("placement") == "mni":
        # MNI-placed model: every case went through the runtime brain extraction
        assert summary["brain_extraction_seconds_median"] > 0
        assert all(c["brain_seconds"] is not None for c in report["cases"])
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert "type_confusion.png" in pngs and "grade_roc.png" in pngs
    assert any(name.startswith("overlay_") for name in pngs)


def test_missing_sequence_subset_runs(cases: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "subset.json"
    rc = main(
        [
            "evaluate",
            "volumes",
            str(cases),
            "--sequences",
            "t1ce,flair",
            "--limit",
            "2",  # "broken" (skipped) sorts first, then case_0
            "--json",
            str(out_json),
        ]
    )
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert report["n_cases"] == 1 and report["n_skipped"] == 1
    assert np.isfinite(report["summary"]["dice_WT"])


def _nifti(path: Path, data: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def test_find_cases_reads_every_brats_layout(tmp_path: Path) -> None:
    """BraTS 2019/2020 (HGG/LGG folders, label 4), 2021 (label 4) and 2023 (t1n/t1c/t2w/t2f,
    label 3) layouts are all found, with grade and labels mapped to the internal ones."""
    from tumorlens.evaluation.volumes import find_cases, load_labels

    img = np.ones((4, 4, 4), np.float32)
    seg4 = np.zeros((4, 4, 4), np.uint8)
    seg4[0, 0, 0], seg4[1, 1, 1], seg4[2, 2, 2] = 1, 2, 4
    seg3 = np.where(seg4 == 4, 3, seg4).astype(np.uint8)
    for grade, cid in (("HGG", "BraTS20_Training_001"), ("LGG", "BraTS20_Training_002")):
        for s in ("t1", "t1ce", "t2", "flair"):
            _nifti(tmp_path / "b20" / grade / cid / f"{cid}_{s}.nii.gz", img)
        _nifti(tmp_path / "b20" / grade / cid / f"{cid}_seg.nii.gz", seg4)
    cid = "BraTS2021_00000"
    for s in ("t1", "t1ce", "t2", "flair", "seg"):
        _nifti(tmp_path / "b21" / cid / f"{cid}_{s}.nii.gz", seg4 if s == "seg" else img)
    cid = "BraTS-GLI-00000-000"
    for s in ("t1n", "t1c", "t2w", "t2f", "seg"):
        _nifti(tmp_path / "b23" / cid / f"{cid}-{s}.nii.gz", seg3 if s == "seg" else img)

    b20 = find_cases(tmp_path / "b20")
    assert [(c.case_id, c.grade, c.tumour_type) for c in b20] == [
        ("BraTS20_Training_001", "HGG", "hgg"),
        ("BraTS20_Training_002", "LGG", "lgg"),
    ]
    (b21,) = find_cases(tmp_path / "b21")
    (b23,) = find_cases(tmp_path / "b23")
    assert b23.layout == "brats2023" and set(b23.images) == {"t1", "t1ce", "t2", "flair"}
    for case in (b20[0], b21, b23):
        labels, _ = load_labels(case)
        assert labels[2, 2, 2] == 3 and labels[1, 1, 1] == 2 and labels[0, 0, 0] == 1


def test_aligned_study_for_brain_extraction() -> None:
    """Model sequence names map to the pipeline's (t1ce -> t1c, the reference); a sequence on
    another grid is resampled onto the reference's."""
    from tumorlens.evaluation.volumes import aligned_study

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    other = np.diag([4.0, 4.0, 4.0, 1.0])
    t1ce = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    flair = np.ones((4, 4, 4), np.float32)
    study = aligned_study({"t1ce": (t1ce, affine), "flair": (flair, other)})
    assert study.reference == "t1c" and set(study.sequences) == {"t1c", "flair"}
    assert study.shape == (8, 8, 8)
    np.testing.assert_array_equal(study.array("t1c"), t1ce)
    assert study.array("flair").shape == (8, 8, 8)
    assert study.array("flair")[2, 2, 2] == 1.0


def test_motion_correction_realigns_a_moved_sequence(cases: Path, tmp_path: Path) -> None:
    """A FLAIR whose content is rotated 6 degrees with its affine unchanged (the patient moved
    between series) is brought back onto T1c by the service's alignment; the CLI takes it."""
    from scipy import ndimage

    from tumorlens.evaluation.volumes import find_cases, motion_corrected
    from tumorlens.inference.preprocess3d import load_nifti

    case = next(c for c in find_cases(cases) if c.case_id == "case_0")
    arrays = {name: load_nifti(path) for name, path in case.images.items()}
    flair, affine = arrays["flair"]
    moved = ndimage.rotate(flair, 6.0, axes=(0, 1), reshape=False, order=1)
    aligned, methods = motion_corrected({**arrays, "flair": (moved, affine)})
    assert methods["t1ce"] == "reference"
    assert methods["flair"] == "frame of reference, motion corrected"
    brain = flair > np.percentile(flair, 60)
    before = float(np.abs(moved - flair)[brain].mean())
    after = float(np.abs(aligned["flair"][0] - flair)[brain].mean())
    # the best any resampling can do here: rotating back by the true angle (two trilinear
    # passes at 4 mm blur the edges, so neither reaches 0)
    ideal = ndimage.rotate(moved, -6.0, axes=(0, 1), reshape=False, order=1)
    floor = float(np.abs(ideal - flair)[brain].mean())
    assert after < before - 0.6 * (before - floor), (before, after, floor)
    out_json = tmp_path / "m.json"
    argv = ["evaluate", "volumes", str(cases), "--correct-motion", "--limit", "2"]
    assert main([*argv, "--threads", "2", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())  # "broken" sorts first and is still skipped
    assert (report["n_cases"], report["n_skipped"]) == (1, 1)
    assert report["cases"][0]["dice"]["WT"] > 0.5


def test_card_post_processing_is_what_the_runtime_applies(cases: Path, tmp_path: Path) -> None:
    """The shipped weights under a card asking for min_enhancing_ml: the HGG phantom's
    enhancing rim, found without it, comes out as tumour core (ET Dice 0, TC kept)."""
    zoo = tmp_path / "zoo"
    shutil.copytree(ZOO, zoo, ignore=shutil.ignore_patterns("slice_type_2d*", "__*"))
    card = json.loads((zoo / "tumour3d.json").read_text())
    card["postprocessing"] = {"min_enhancing_ml": 1e6}
    (zoo / "tumour3d.json").write_text(json.dumps(card))
    dice = {}
    for name, model in (("shipped", ZOO), ("merged", zoo)):
        out_json = tmp_path / f"{name}.json"
        args = ["evaluate", "volumes", str(cases), "--limit", "2", "--json", str(out_json)]
        assert main([*args, "--model", str(model / "tumour3d.json")]) == 0
        (case,) = json.loads(out_json.read_text())["cases"]
        assert case["tumour_type"] == "hgg"
        dice[name] = case["dice"]
    assert dice["shipped"]["ET"] > 0.3
    assert dice["merged"]["ET"] == 0.0
    assert dice["merged"]["TC"] >= dice["shipped"]["TC"] - 0.02
    assert dice["merged"]["WT"] == pytest.approx(dice["shipped"]["WT"], abs=0.02)


def _healthy_cases(cases: Path) -> list[Path]:
    return [p for p in sorted(cases.iterdir()) if p.is_dir() and p.name != "broken"]


@pytest.fixture(scope="module")
def tuning(cases: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's three readable cases only (the sweep has no skip logic to test)."""
    root = tmp_path_factory.mktemp("tuning")
    for case in _healthy_cases(cases):
        shutil.copytree(case, root / case.name)
    shutil.copy(cases / "cases.json", root / "cases.json")
    return root


def test_refine_sweep_scores_each_strength_with_the_runtime_path(
    tuning: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch", reason="tumorlens_train needs the train extra")
    from tumorlens_train import refine_sweep

    result = refine_sweep.sweep(ZOO / "tumour3d.json", tuning, [0.0, 8.0], threads=2)
    assert result["n_cases"] == 3
    rows = {r["strength"]: r for r in result["rows"]}
    assert [r["strength"] for r in result["rows"]] == [0.0, 8.0]
    best = max(result["rows"], key=lambda r: (r["score"], -r["strength"]))
    assert result["chosen_strength"] == best["strength"]
    for row in rows.values():
        assert row["score"] == pytest.approx((row["WT"] + row["TC"] + row["ET"]) / 3, abs=1e-3)
    # Strength 0 is the runtime without refinement: evaluate volumes under a copy of the card
    # with the step removed gives the same Dice.
    from tumorlens.evaluation.volumes import evaluate_volumes

    zoo = tmp_path / "zoo"
    shutil.copytree(ZOO, zoo, ignore=shutil.ignore_patterns("slice_type_2d*", "__*"))
    card = json.loads((zoo / "tumour3d.json").read_text())
    (card.get("postprocessing") or {}).pop("boundary_refinement", None)
    (zoo / "tumour3d.json").write_text(json.dumps(card))
    report, _ = evaluate_volumes(tuning, zoo / "tumour3d.json", zoo, threads=2)
    for region in ("WT", "TC", "ET"):
        assert rows[0.0][region] == pytest.approx(report.summary[f"dice_{region}"], abs=1e-3)
    # 4 mm phantoms are coarser than the model grid: still, refinement must not wreck them.
    assert rows[8.0]["WT"] > 0.5


def test_recard_keeps_the_onnx_and_remeasures_with_the_new_postprocessing(
    tuning: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch", reason="tumorlens_train needs the train extra")
    from tumorlens_train.cli import main as train_main

    out = tmp_path / "zoo"
    rc = train_main(
        [
            "recard",
            "--card",
            str(ZOO / "tumour3d.json"),
            "--out",
            str(out),
            "--version",
            "9.9.9",
            "--refinement-strength",
            "8",
            "--seg-logit-offsets",
            "0.5,0,0,0",
            "--heldout",
            str(tuning),
            "--heldout-subset",
            "t1ce,flair",
            "--also",
            f"again={tuning}",
        ]
    )
    assert rc == 0
    source = json.loads((ZOO / "tumour3d.json").read_text())
    card = json.loads((out / "tumour3d.json").read_text())
    assert card["version"] == "9.9.9" and card["sha256"] == source["sha256"]
    assert (out / "tumour3d.onnx").read_bytes() == (ZOO / "tumour3d.onnx").read_bytes()
    post = card["postprocessing"]
    assert post["boundary_refinement"]["strength"] == 8.0
    assert post["seg_logit_offsets"] == [0.5, 0.0, 0.0, 0.0]
    assert card["derived_from"]["version"] == source["version"]
    assert set(card["metrics"]) == {
        "held_out_phantoms_all_sequences",
        "held_out_phantoms_t1ce_flair_only",
        "held_out_phantoms_again",
    }
    assert card["metrics"]["held_out_phantoms_all_sequences"]["n_cases"] == 3
    assert card["inputs"][0]["validated_subsets"] == [
        ["t1", "t1ce", "t2", "flair"],
        ["t1ce", "flair"],
    ]
    # The new card runs: the runtime reads both steps from it.
    from tumorlens.inference.volume_model import VolumeModel

    net = VolumeModel(out / "tumour3d.json", ZOO)
    assert net.refinement is not None and net.refinement.strength == 8.0
    assert net.seg_logit_offsets is not None and net.seg_logit_offsets[0] == 0.5
    # The source folder is refused as --out: it would overwrite the shipped card.
    with pytest.raises(SystemExit, match="must differ"):
        argv = ["recard", "--card", str(out / "tumour3d.json"), "--out", str(out)]
        train_main([*argv, "--version", "1", "--heldout", str(tuning)])


def test_boundary_review_shells_bins_every_error_voxel(tuning: Path) -> None:
    """Errors binned by distance: every false-positive and false-negative voxel of the
    runtime's labels lands in some band (their sums equal the totals evaluate volumes implies)."""
    pytest.importorskip("torch", reason="tumorlens_train needs the train extra")
    from tumorlens.evaluation.volumes import evaluate_volumes, find_cases, load_labels
    from tumorlens_train.boundary_review import BANDS_MM, shells

    result = shells(ZOO / "tumour3d.json", tuning)
    assert result["cases"] == 3 and len(result["false_positive_ml_by_distance_outside"]) == len(
        BANDS_MM
    )
    report, preds = evaluate_volumes(tuning, ZOO / "tumour3d.json", ZOO, threads=2)
    truths = {c.case_id: c for c in find_cases(tuning)}
    fp = fn = 0.0
    for case, pred in zip(report.cases, preds, strict=True):
        truth, affine = load_labels(truths[case.case_id])
        ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        fp += float(((pred.labels > 0) & (truth == 0)).sum()) * ml
        fn += float(((pred.labels == 0) & (truth > 0)).sum()) * ml
    assert sum(result["false_positive_ml_by_distance_outside"]) == pytest.approx(fp, abs=0.5)
    assert sum(result["false_negative_ml_by_depth_inside"]) == pytest.approx(fn, abs=0.5)
    assert fp + fn > 0  # the 4 mm phantoms leave the model some error to bin
