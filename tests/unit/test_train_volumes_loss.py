"""The 3D training losses against hand-computed values, and which step ``best.pt`` keeps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tumorlens.inference.preprocess3d import GridSpec  # noqa: E402
from tumorlens_train import train_volumes, volumes  # noqa: E402
from tumorlens_train.nets3d import Net3dConfig  # noqa: E402


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    """(N=len(probs), 4 classes, 1x1x1) logits whose softmax is ``probs``."""
    return torch.tensor(probs).log().reshape(len(probs), 4, 1, 1, 1)


def test_region_dice_per_case_vs_batch_by_hand() -> None:
    # Case 0: one oedema voxel predicted as oedema with p=0.5. Case 1: healthy voxel, p(tumour)
    # spread 0.1 each over core/oedema/enhancing.
    logits = torch.cat(
        [
            _logits_for([[0.5, 0.0 + 1e-12, 0.5, 0.0 + 1e-12]]),
            _logits_for([[0.7, 0.1, 0.1, 0.1]]),
        ]
    )
    target = torch.tensor([2, 0]).reshape(2, 1, 1, 1)
    # Per case, smoothing 1: WT case0 = (2*0.5+1)/(0.5+1+1) = 0.8, case1 = 1/(0.3+1);
    # TC case0 = 1/(0+1) = 1, case1 = 1/(0.2+1); ET case0 = 1, case1 = 1/(0.1+1).
    per_case = [
        1 - 0.8,
        1 - 1 / 1.3,
        0.0,
        1 - 1 / 1.2,
        0.0,
        1 - 1 / 1.1,
    ]
    expected = sum(per_case) / 6
    got = float(train_volumes.region_dice_loss(logits, target))
    assert got == pytest.approx(expected, abs=1e-6)
    # Over the batch: WT (2*0.5+1)/(0.8+1+1), TC 1/(0.2+1), ET 1/(0.1+1).
    batch = ((1 - 2 / 2.8) + (1 - 1 / 1.2) + (1 - 1 / 1.1)) / 3
    got = float(train_volumes.region_dice_loss(logits, target, batch=True))
    assert got == pytest.approx(batch, abs=1e-6)


def test_tumour_weighted_cross_entropy_by_hand() -> None:
    logits = torch.cat([_logits_for([[0.5, 0.1, 0.3, 0.1]]), _logits_for([[0.8, 0.1, 0.05, 0.05]])])
    target = torch.tensor([2, 0]).reshape(2, 1, 1, 1)
    ce_tumour, ce_bg = -math.log(0.3), -math.log(0.8)
    plain = float(train_volumes.weighted_cross_entropy(logits, target, 1.0))
    assert plain == pytest.approx((ce_tumour + ce_bg) / 2, abs=1e-6)
    weighted = float(train_volumes.weighted_cross_entropy(logits, target, 10.0))
    assert weighted == pytest.approx((10 * ce_tumour + ce_bg) / 11, abs=1e-6)


GRID = GridSpec(spacing=8.0, shape=(24, 32, 24))


def _phantoms(*kinds: tuple[int, str]) -> list[volumes.Prepared]:
    return [
        volumes.prepare_phantom(seed, kind, GRID, spacing=6.0, thick_slice_prob=0.0)
        for seed, kind in kinds
    ]


def _tiny_config(work_dir: Path, **overrides: object) -> train_volumes.TrainConfig:
    """A 4-channel, 3-level net on a coarse grid: seconds per run on one thread."""
    base: dict[str, object] = {
        "grid": GRID,
        "net": Net3dConfig(base=4, levels=3),
        "batch_size": 2,
        "bf16": False,
        "threads": 1,
    }
    return train_volumes.TrainConfig(work_dir=work_dir, **{**base, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize("selection", ["best", "last"])
def test_checkpoint_selection_decides_what_best_pt_holds(tmp_path: Path, selection: str) -> None:
    cases = _phantoms((1, "hgg"), (2, "hgg"))
    cfg = _tiny_config(
        tmp_path,
        steps=4,
        val_every=1,
        checkpoint=selection,
        batch_dice=True,
        ce_tumour_weight=5.0,
    )
    result = train_volumes.train(cfg, cases, cases[:1])
    kept = torch.load(tmp_path / "best.pt", weights_only=False)
    assert kept["selection"] == selection
    if selection == "last":
        assert kept["step"] == 4
    else:
        assert kept["step"] == result["best"]["step"]
    assert kept["train"]["batch_dice"] is True
    assert kept["train"]["ce_tumour_weight"] == 5.0


def test_unknown_checkpoint_selection_is_refused(tmp_path: Path) -> None:
    cfg = train_volumes.TrainConfig(work_dir=tmp_path, checkpoint="mean")
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        train_volumes.train(cfg, [], [])


def test_component_sweep_scores_each_threshold_on_the_runs_validation_cases(
    tmp_path: Path,
) -> None:
    import numpy as np

    from tumorlens_train import component_sweep

    cases = _phantoms((1, "hgg"), (2, "healthy"))
    cache = tmp_path / "cache" / "phantoms" / "grid-test"
    cache.mkdir(parents=True)
    for case in cases:
        np.savez(
            cache / f"{case.case_id}.npz",
            image=case.image,
            labels=case.labels,
            type_index=case.type_index,
        )
    cfg = _tiny_config(
        tmp_path, steps=2, val_every=2, data={"validation_cases": [c.case_id for c in cases]}
    )
    train_volumes.train(cfg, cases, cases)
    result = component_sweep.sweep(tmp_path, "best.pt", [0.0, 1.0, 1e6])
    assert result["n_cases"] == 2
    assert [r["voxels"] for r in result["rows"]] == [0, 2, 1953125]  # 1 mL = 1.95 voxels of 8 mm
    # A threshold above every component empties the label maps: the healthy case is clean,
    # the glioma case scores 0.
    huge = result["rows"][2]
    assert huge["healthy_clean"] == "1/1"
    assert huge["WT"] == pytest.approx(0.5)


def test_component_sweep_on_a_tuning_set_crosses_both_thresholds(tmp_path: Path) -> None:
    """--data: every case of another folder, cached apart from the run's own cases (which
    share their case ids), scored at each pair of thresholds."""
    from tumorlens_train import component_sweep
    from tumorlens_train.phantoms import PhantomConfig, generate_case, write_case, write_index

    cases = _phantoms((1, "hgg"), (2, "lgg"))  # a batch of two needs two cases
    cfg = _tiny_config(tmp_path / "work", steps=1, val_every=1)
    train_volumes.train(cfg, cases, cases)
    tune = tmp_path / "tune"
    config = PhantomConfig(spacing=6.0, thick_slice_prob=0.0)
    metas = [
        write_case(generate_case(5 + i, kind, config), tune, f"phantom_0000{i}")
        for i, kind in enumerate(("lgg", "healthy"))
    ]
    write_index(tune, metas)
    result = component_sweep.sweep(tmp_path / "work", "best.pt", [0.0, 1e6], [0.0, 1e6], data=tune)
    assert result["n_cases"] == 2 and result["cases"] == str(tune)
    pairs = [(r["min_tumour_component_ml"], r["min_enhancing_ml"]) for r in result["rows"]]
    assert pairs == [(0.0, 0.0), (0.0, 1e6), (1e6, 0.0), (1e6, 1e6)]
    # The run's best.pt is not the point: at 1e6 mL of tumour every component goes, so the
    # healthy case is clean whatever the net predicts.
    assert result["rows"][2]["healthy_clean"] == "1/1"
    assert sorted(p.parent.parent.name for p in (tmp_path / "work").rglob("*.npz")) == [
        "tune",
        "tune",
    ]
    # Logit offsets: +100 on background leaves no tumour voxel (the LGG scores 0, the healthy
    # case 1); the zero vector is the plain softmax; on a tie the smaller offsets win.
    shifted = component_sweep.sweep(
        tmp_path / "work",
        "best.pt",
        [0.0],
        offsets=[(0.0, 0.0, 0.0, 0.0), (100.0, 0.0, 0.0, 0.0)],
        data=tune,
    )
    plain, none = shifted["rows"]
    assert plain["seg_logit_offsets"] == [0.0, 0.0, 0.0, 0.0]
    assert (plain["WT"], plain["TC"], plain["ET"]) == (
        result["rows"][0]["WT"],
        result["rows"][0]["TC"],
        result["rows"][0]["ET"],
    )
    assert none["seg_logit_offsets"] == [100.0, 0.0, 0.0, 0.0]
    assert none["healthy_clean"] == "1/1" and none["WT"] == pytest.approx(0.5)
    if none["score"] == plain["score"]:
        assert shifted["chosen_offsets"] == [0.0, 0.0, 0.0, 0.0]


def test_staged_instance_norm_is_the_same_maths_and_exports_accurately(tmp_path: Path) -> None:
    """The export form of instance norm equals the float64 maths, in torch and under ONNX
    Runtime, on a channel with a large mean over as many voxels as the model grid. (The drift
    it avoids shows on the trained model's real inputs: the export checks those, within 1e-4.)"""
    import numpy as np

    from tumorlens.inference.session import create_session
    from tumorlens_train.export import export_module
    from tumorlens_train.nets3d import StagedInstanceNorm3d

    norm = torch.nn.InstanceNorm3d(2, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, 0.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.2]))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 64, 80, 64)).astype(np.float32)
    x[:, 0] = 20.0 + 0.5 * x[:, 0]
    staged = StagedInstanceNorm3d(norm).eval()
    with torch.no_grad():
        want = norm.eval().double()(torch.from_numpy(x).double()).numpy()  # reference maths
        got = staged(torch.from_numpy(x)).numpy()
    norm.float()
    np.testing.assert_allclose(got, want, atol=1e-4)
    path = tmp_path / "norm.onnx"
    export_module(staged, torch.from_numpy(x[:1]), path, input_name="x", output_names=("y",))
    (ort_out,) = create_session(path, threads=1, prefer_gpu=False).run(None, {"x": x})
    assert float(np.abs(ort_out - want).max()) <= 1e-4


def test_export_writes_the_post_processing_the_runtime_reads(tmp_path: Path) -> None:
    from tumorlens.inference.volume_model import VolumeModel
    from tumorlens_train import export3d

    cases = _phantoms((1, "hgg"), (2, "lgg"))
    train_volumes.train(_tiny_config(tmp_path / "work", steps=1, val_every=1), cases, cases[:1])
    card_path = export3d.export_checkpoint(
        checkpoint=tmp_path / "work" / "best.pt",
        out_dir=tmp_path / "zoo",
        name="tiny3d",
        version="0.0.1",
        threads=1,
        min_component_ml=1.0,
        min_enhancing_ml=2.0,
    )
    model = VolumeModel(card_path, tmp_path / "zoo", threads=1)
    post = model.card.raw["postprocessing"]
    assert post["min_tumour_component_ml"] == 1.0 and post["min_enhancing_ml"] == 2.0
    assert "merge_small_enhancement" in post["rule"]
    assert model.min_component_voxels == 2  # 1 mL on an 8 mm grid: 1.95 voxels
    assert model.min_enhancing_voxels == 4  # 2 mL: 3.9 voxels
