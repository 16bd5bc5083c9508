"""``tumorlens evaluate`` needs only the runtime: it runs in a process where torch, onnx, nilearn
and the training package cannot be imported (``sys.modules[name] = None`` makes any import of
them raise ImportError), as in a fresh venv without the ``train`` extra."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "models/tumorlens_zoo"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
BLOCKED = ("torch", "onnx", "nilearn", "tumorlens_train")

pytestmark = pytest.mark.slow

_RUNNER = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # import raises ImportError
from tumorlens.cli import main
rc = main(sys.argv[1:])
loaded = [m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None]
print("LOADED", loaded)
sys.exit(rc)
"""


def _evaluate_without_torch(args: list[str]) -> subprocess.CompletedProcess[str]:
    code = _RUNNER.format(blocked=BLOCKED)
    return subprocess.run(
        [sys.executable, "-c", code, "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )


def test_the_blocker_blocks() -> None:
    # Without this the test below could pass in a process that imports torch after all.
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torch'] = None\nimport torch"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0 and "import of torch halted" in out.stderr


def test_evaluate_slices_without_torch(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "brain-mri-4class/Training"
    if not data.is_dir():
        pytest.skip(f"data set not found at {data}")
    root = tmp_path / "slices"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for src in sorted((data / cls).glob("*.jpg"))[:2]:
            shutil.copy(src, root / cls / src.name)
    report = tmp_path / "slices.json"
    out = _evaluate_without_torch(["slices", str(root), "--json", str(report), "--threads", "1"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout
    metrics = json.loads(report.read_text())
    assert metrics["n_images"] == 8
    assert set(metrics["per_class"]) == set(CLASSES)


def test_evaluate_volumes_without_torch(tmp_path: Path) -> None:
    pytest.importorskip("nilearn", reason="phantom generation needs the template (nilearn)")
    from tumorlens_train.phantoms import PhantomConfig, generate_case, write_case, write_index

    root = tmp_path / "volumes"
    config = PhantomConfig(spacing=4.0, thick_slice_prob=0.0)
    write_index(root, [write_case(generate_case(910_000, "hgg", config), root, "case_0")])
    report = tmp_path / "volumes.json"
    out = _evaluate_without_torch(["volumes", str(root), "--json", str(report), "--threads", "1"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout
    summary = json.loads(report.read_text())["summary"]
    assert summary["type_n"] == 1
    assert 0.0 <= summary["dice_WT"] <= 1.0
