"""A tiny 3D model trained a few steps on two coarse phantoms, exported to ONNX: ONNX Runtime
must reproduce PyTorch within the export tolerance, and the card must describe the file."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from tumorlens.inference.preprocess3d import GridSpec, load_volume_card  # noqa: E402
from tumorlens_train import export3d, train_volumes, volumes  # noqa: E402
from tumorlens_train.nets3d import Net3dConfig  # noqa: E402

GRID = GridSpec(spacing=8.0, shape=(24, 32, 24))


@pytest.fixture(scope="module")
def tiny_cases() -> list[volumes.Prepared]:
    return [
        volumes.prepare_phantom(seed, ttype, GRID, spacing=6.0, thick_slice_prob=0.0)
        for seed, ttype in ((1, "hgg"), (2, "lgg"))
    ]


def test_prepared_phantom_is_normalised(tiny_cases: list[volumes.Prepared]) -> None:
    case = tiny_cases[0]
    assert case.image.shape == (4, *GRID.shape)
    assert case.labels.shape == GRID.shape
    assert case.type_index == 1
    inside = case.image[0] != 0
    assert abs(float(case.image[0][inside].astype(np.float32).mean())) < 0.05
    assert (case.labels > 0).any(), "the tumour must survive resampling to the grid"


def test_train_export_matches_torch(tmp_path: Path, tiny_cases: list[volumes.Prepared]) -> None:
    cfg = train_volumes.TrainConfig(
        work_dir=tmp_path / "work",
        grid=GRID,
        net=Net3dConfig(base=4, levels=3),
        steps=3,
        batch_size=2,
        bf16=False,
        threads=1,
        val_every=3,
    )
    result = train_volumes.train(cfg, tiny_cases, tiny_cases[:1])
    assert result["steps"] == 3
    # Stage 2: conv type head on the frozen encoder; the segmentation weights must not move.
    best = train_volumes.train_type_head(
        cfg.work_dir / "best.pt",
        cfg.work_dir / "best_type.pt",
        tiny_cases,
        tiny_cases,
        width=4,
        epochs=2,
        threads=1,
    )
    assert 0.0 <= best["val_accuracy"] <= 1.0
    # Cases of unknown type (BraTS 2021/2023 carry none) are left out of stage 2, not fatal.
    untyped = [dataclasses.replace(c, type_index=volumes.UNKNOWN) for c in tiny_cases]
    train_volumes.train_type_head(
        cfg.work_dir / "best.pt",
        tmp_path / "untyped.pt",
        [*tiny_cases, *untyped],
        untyped,
        width=4,
        epochs=1,
        threads=1,
    )
    with pytest.raises(ValueError, match="known tumour type"):
        train_volumes.train_type_head(
            cfg.work_dir / "best.pt", tmp_path / "none.pt", untyped, untyped, width=4, epochs=1
        )
    stage1 = torch.load(cfg.work_dir / "best.pt", weights_only=False)["model"]
    stage2 = torch.load(cfg.work_dir / "best_type.pt", weights_only=False)["model"]
    assert torch.equal(stage1["seg_head.weight"], stage2["seg_head.weight"])
    assert "type_conv.0.weight" in stage2
    card_path = export3d.export_checkpoint(
        checkpoint=cfg.work_dir / "best_type.pt",
        out_dir=tmp_path / "zoo",
        name="tiny3d",
        version="0.0.1",
        threads=1,
        verify_real=np.stack([c.image.astype(np.float32) for c in tiny_cases]),
    )
    card = json.loads(card_path.read_text())
    diffs = card["verification"]["max_abs_diff_real"]
    assert max(diffs.values()) <= 1e-4
    assert card["format"]["onnx_opset"] >= 17
    model_path, loaded = load_volume_card(card_path, tmp_path)
    assert model_path.stat().st_size < 50 * 1024 * 1024
    assert loaded.grid == GRID
    assert loaded.type_labels[1:3] == ("hgg", "lgg")
    assert "research use only" in card["intended_use"].lower()
    # The command's --export-only path re-exports the stage-2 checkpoint without training.
    from tumorlens_train.cli import main as train_main

    rc = train_main(
        [
            "seg3d",
            "--export-only",
            "--data",
            str(tmp_path),
            "--work-dir",
            str(cfg.work_dir),
            "--out",
            str(tmp_path / "zoo2"),
            "--name",
            "tiny3d",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    again = json.loads((tmp_path / "zoo2" / "tiny3d.json").read_text())
    assert again["architecture"]["type_head_width"] == 4


MNI_GRID = GridSpec(spacing=8.0, shape=(24, 32, 24), placement="mni")


def test_mni_grid_phantom_export_card(tmp_path: Path) -> None:
    """An MNI-placed grid: phantoms go through the runtime brain extraction (skull-stripped,
    zero outside the dilated brain mask) and the card carries the placement."""
    cases = [
        volumes.prepare_phantom(seed, ttype, MNI_GRID, spacing=4.0, thick_slice_prob=0.0)
        for seed, ttype in ((3, "hgg"), (4, "meningioma"))
    ]
    for case in cases:
        assert case.image.shape == (4, *MNI_GRID.shape)
        assert (case.labels > 0).any(), "the tumour must survive resampling to the grid"
        brain = case.image[0] != 0
        # skull-stripped: a brain-sized region (MNI brain ~1.9 L = ~3700 voxels of 8 mm)
        assert 2000 < int(brain.sum()) < 7000
        assert not brain[0].any() and not brain[-1].any()  # x edges: +-92 mm, brain +-71
    cfg = train_volumes.TrainConfig(
        work_dir=tmp_path / "work",
        grid=MNI_GRID,
        net=Net3dConfig(base=4, levels=3, type_head_width=4),
        augment=volumes.AugmentConfig(p_affine=1.0),
        steps=2,
        batch_size=2,
        bf16=False,
        threads=1,
        val_every=2,
    )
    train_volumes.train(cfg, cases, cases[:1])
    # warm start from that checkpoint: same weights before the first step
    warm = train_volumes.TrainConfig(
        work_dir=tmp_path / "warm",
        grid=MNI_GRID,
        steps=1,
        batch_size=2,
        bf16=False,
        threads=1,
        val_every=1,
        lr=0.0,
        weight_decay=0.0,
        warm_start=str(cfg.work_dir / "best.pt"),
    )
    train_volumes.train(warm, cases, cases[:1])
    assert warm.net.type_head_width == 4
    before = torch.load(cfg.work_dir / "best.pt", weights_only=False)["model"]
    after = torch.load(warm.work_dir / "last.pt", weights_only=False)["model"]
    assert torch.equal(before["seg_head.weight"], after["seg_head.weight"])
    card_path = export3d.export_checkpoint(
        checkpoint=cfg.work_dir / "best.pt",
        out_dir=tmp_path / "zoo",
        name="tiny3d_mni",
        version="0.0.1",
        threads=1,
    )
    card = json.loads(card_path.read_text())
    assert card["inputs"][0]["grid"]["placement"] == "mni"
    assert "MNI" in card["inputs"][0]["preprocessing"]["placement"]
    _, loaded = load_volume_card(card_path, tmp_path)
    assert loaded.grid == MNI_GRID
    # Held-out metrics on all four sequences and on a subset; exactly those are validated.
    from tumorlens_train.phantoms import PhantomConfig, generate_case, write_case, write_index

    heldout = tmp_path / "heldout"
    config = PhantomConfig(spacing=4.0, thick_slice_prob=0.0)
    write_index(heldout, [write_case(generate_case(5, "hgg", config), heldout, "case_0")])
    zoo = Path(__file__).resolve().parents[2] / "models/tumorlens_zoo"
    beside = functools.partial(
        export3d.export_checkpoint,
        checkpoint=cfg.work_dir / "best.pt",
        out_dir=tmp_path / "zoo",
        name="tiny3d_mni",
        version="0.0.1",
        heldout=heldout,
        threads=1,
    )
    # No template beside the card nor in template_dir: every case skipped is an error.
    with pytest.raises(RuntimeError, match="scored no case"):
        beside(template_dir=tmp_path / "nowhere")
    # The template found in template_dir (the seg3d command's --template-dir).
    card = json.loads(beside(template_dir=zoo).read_text())
    assert card["metrics"]["held_out_phantoms_all_sequences"]["n_cases"] == 1
    template = "mni_icbm152_2009a_brainmask_2mm.nii.gz"
    shutil.copy(zoo / template, tmp_path / "zoo")
    export = beside  # the template now beside the card
    card = json.loads(export(heldout_subsets=[("t1ce", "flair")]).read_text())
    assert card["inputs"][0]["validated_subsets"] == [
        ["t1", "t1ce", "t2", "flair"],
        ["t1ce", "flair"],
    ]
    metrics = card["metrics"]
    assert set(metrics) == {"held_out_phantoms_all_sequences", "held_out_phantoms_t1ce_flair_only"}
    assert metrics["held_out_phantoms_t1ce_flair_only"]["sequences"] == ["t1ce", "flair"]
    assert all(m["n_cases"] == 1 for m in metrics.values())
    with pytest.raises(ValueError, match="unknown sequences"):
        export(heldout_subsets=[("t1c", "flair")])


def test_registration_error_augmentation_keeps_labels_aligned() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((4, 24, 32, 24), np.float16)
    labels = np.zeros((24, 32, 24), np.uint8)
    labels[8:14, 10:18, 9:15] = 2
    image[:, 8:14, 10:18, 9:15] = 3.0
    cfg = volumes.AugmentConfig(p_flip=0.0, p_affine=1.0, p_drop=0.0, intensity_scale=0.0)
    for _ in range(3):
        x, y = volumes.augment(image, labels, rng, cfg)
        assert x.shape == image.shape and y.shape == labels.shape
        assert (y == 2).sum() > 0
        # the bright block and the label block moved together
        assert float(x[0][y == 2].mean()) > 2.0
