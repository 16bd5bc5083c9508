"""``tumorlens evaluate slices`` end to end on the shipped model and a few real slices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tumorlens.cli import main

REPO = Path(__file__).resolve().parents[2]
DATASET = "brain-mri-4class/Training"
ZOO = REPO / "models/tumorlens_zoo"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
PER_CLASS = 5

pytestmark = pytest.mark.slow


@pytest.fixture
def subset(tmp_path: Path, shared_data: Path) -> Path:
    """5 real slices per class, plus a truncated JPEG and an RGBA PNG (4 channels)."""
    data = shared_data / DATASET
    if not data.is_dir():
        pytest.skip(f"data set not found at {data}")
    if not (ZOO / "slice_type_2d.onnx").is_file():
        pytest.skip("shipped model models/tumorlens_zoo/slice_type_2d.onnx not built")
    root = tmp_path / "eval"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for src in sorted((data / cls).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(src, root / cls / src.name)
    good = next((root / "glioma").glob("*.jpg")).read_bytes()
    (root / "glioma" / "broken.jpg").write_bytes(good[: len(good) // 3])
    Image.new("RGBA", (64, 64)).save(root / "meningioma" / "four_channels.png")
    (root / "notumor" / "notes.txt").write_text("not an image; ignored")
    return root


def test_evaluate_slices_end_to_end(
    subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "metrics.json"
    plots = tmp_path / "plots"
    rc = main(["evaluate", "slices", str(subset), "--json", str(out_json), "--plots", str(plots)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "accuracy" in captured.out
    assert "skipped 2" in captured.out

    report = json.loads(out_json.read_text())
    for key in (
        "accuracy",
        "per_class",
        "macro_auc",
        "kappa",
        "ms_per_image",
        "confusion_matrix",
        "skipped",
    ):
        assert key in report
    assert report["n_images"] == 4 * PER_CLASS
    assert sum(map(sum, report["confusion_matrix"])) == 4 * PER_CLASS
    assert set(report["per_class"]) == set(CLASSES)
    skipped = {Path(s["file"]).name: s["reason"] for s in report["skipped"]["files"]}
    assert report["skipped"]["count"] == 2
    assert "cannot decode" in skipped["broken.jpg"]
    assert "4 channel(s)" in skipped["four_channels.png"]
    # These slices come from the training data, so the shipped model must know them.
    assert report["accuracy"] >= 0.8
    low, high = report["accuracy_ci95"]
    assert low < report["accuracy"] <= high <= 1.0
    glioma = report["per_class"]["glioma"]
    assert glioma["sensitivity_ci95"][0] < glioma["sensitivity"] <= glioma["sensitivity_ci95"][1]
    assert report["ms_per_image"] > 0
    for name in ("confusion_matrix.png", "roc.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_file_and_model_path(subset: Path, tmp_path: Path) -> None:
    names = [f"{cls}/{p.name}" for cls in CLASSES for p in sorted((subset / cls).glob("*.jpg"))[:2]]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": names}))
    out_json = tmp_path / "m.json"
    rc = main(
        [
            "evaluate",
            "slices",
            str(subset),
            "--model",
            str(ZOO / "slice_type_2d.json"),
            "--split-file",
            str(split),
            "--json",
            str(out_json),
        ]
    )
    assert rc == 0
    assert json.loads(out_json.read_text())["n_images"] == 8


def test_unknown_class_folder_is_an_error(subset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (subset / "astrocytoma").mkdir()
    shutil.copy(next((subset / "glioma").glob("Tr*.jpg")), subset / "astrocytoma" / "a.jpg")
    rc = main(["evaluate", "slices", str(subset)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown class folder(s) 'astrocytoma'" in err


def test_empty_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (ZOO / "slice_type_2d.onnx").is_file():
        pytest.skip("shipped model not built")
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "slices", str(tmp_path / "empty")]) == 2
    assert "no class folders" in capsys.readouterr().err
    (tmp_path / "empty" / "glioma").mkdir()
    assert main(["evaluate", "slices", str(tmp_path / "empty")]) == 2
    assert "no images to evaluate" in capsys.readouterr().err


def test_model_with_wrong_sha256_is_refused(
    subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(ZOO / "slice_type_2d.onnx", zoo / "slice_type_2d.onnx")
    card = json.loads((ZOO / "slice_type_2d.json").read_text())
    card["sha256"] = "0" * 64
    (zoo / "slice_type_2d.json").write_text(json.dumps(card))
    rc = main(["evaluate", "slices", str(subset), "--model", str(zoo / "slice_type_2d.json")])
    assert rc == 2
    assert "does not match its card" in capsys.readouterr().err
