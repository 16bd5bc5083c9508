"""Export path of the 2D classifier.

The export tests train a tiny net for a few steps on a few real slices, export it and check
ONNX Runtime against PyTorch; they skip when torch (training extra) or the data set is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tumorlens.inference import session as session_mod
from tumorlens.inference.card import load_card, resolve_model, sha256_file
from tumorlens.inference.preprocess import preprocess_file

DATASET = "brain-mri-4class/Training"
SIZE = 64
PER_CLASS = 3


def _torch() -> Any:
    return pytest.importorskip("torch", reason="torch (training extra) not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Any]:
    """A tiny SliceNet trained 4 steps on 3 real slices per class, exported to ONNX."""
    torch = _torch()
    data = shared_data / DATASET
    if not data.is_dir():
        pytest.skip(f"data set not found at {data}")
    from tumorlens_train import export, slices
    from tumorlens_train.nets2d import NetConfig, SliceNet

    torch.manual_seed(0)
    samples = [
        s
        for label in range(4)
        for s in [x for x in slices.discover(data) if x.label == label][:PER_CLASS]
    ]
    grids = slices.load_grids(samples, SIZE)
    dataset = slices.SliceDataset(grids, [s.label for s in samples], slices.AugmentConfig())
    model = SliceNet(
        NetConfig(stem_width=8, widths=(8, 16), blocks=(1, 1), strides=(2, 1), dropout=0.0)
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, shuffle=True)
    model.train()
    for _, (x, y) in zip(range(4), loader, strict=False):
        loss = torch.nn.functional.cross_entropy(model(x)[0], y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    out = tmp_path_factory.mktemp("export")
    path = out / "tiny.onnx"
    export.export_onnx(model, path, SIZE)
    real = np.stack([preprocess_file(s.path, SIZE) for s in samples])
    return {"model": model, "path": path, "real": real, "samples": samples, "data": data}


def test_ort_matches_torch_on_random_and_real_slices(tiny: dict[str, Any]) -> None:
    from tumorlens_train import export

    random = np.random.default_rng(0).standard_normal((3, 1, SIZE, SIZE)).astype(np.float32)
    for inputs in (random, tiny["real"]):
        diffs = export.verify_onnx(tiny["model"], tiny["path"], inputs)
        assert max(diffs.values()) <= 1e-4, diffs


def test_tolerance_is_absolute_for_logits_and_peak_relative_for_feature_maps() -> None:
    _torch()
    from tumorlens_train import export

    peaks = {"logits": 20.0, "features": 27.0, "type_features": 27.0}
    diffs = {"logits": 9e-5, "features": 1.8e-4, "type_features": 2.6e-3}
    assert export.check_tolerance(diffs, peaks) == diffs  # 2.6e-3 < 1e-4 x 27
    for bad, bad_peaks in (
        ({"logits": 1.5e-4}, {"logits": 20.0}),  # logits are never scaled
        ({"type_features": 1.8e-4}, {"type_features": 0.5}),  # small maps: absolute
        ({"type_features": 3e-3}, {"type_features": 27.0}),
        ({"features": 2e-4}, None),  # no peak known: absolute
    ):
        with pytest.raises(RuntimeError, match="differs from PyTorch"):
            export.check_tolerance(bad, bad_peaks)


def test_onnx_has_dynamic_batch_and_both_outputs(tiny: dict[str, Any]) -> None:
    session = session_mod.create_session(tiny["path"], threads=1, prefer_gpu=False)
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    for n in (1, 5):
        logits, features = session.run(None, {"image": tiny["real"][:n]})
        assert logits.shape == (n, 4)
        assert features.shape == (n, 16, SIZE // 4, SIZE // 4)


def test_cam_from_head_weights_reproduces_logits(tiny: dict[str, Any]) -> None:
    from tumorlens_train import export

    assert export.verify_cam(tiny["model"], tiny["path"], tiny["real"]) <= 1e-4


def test_training_tensors_equal_runtime_preprocessing(tiny: dict[str, Any]) -> None:
    from tumorlens_train import slices

    samples = tiny["samples"][:4]
    dataset = slices.SliceDataset(slices.load_grids(samples, SIZE), [s.label for s in samples])
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(dataset[i][0].numpy(), preprocess_file(sample.path, SIZE))


def test_export_checkpoint_writes_card_with_matching_sha(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    torch = _torch()
    from tumorlens_train import export, slices

    model = tiny["model"]
    torch.save(
        {
            "config": model.config.to_dict(),
            "state_dict": model.state_dict(),
            "epoch": 1,
            "size": SIZE,
            "train_config": {"epochs": 1},
        },
        tmp_path / "best.pt",
    )
    val = tiny["samples"][::PER_CLASS]  # one per class
    split = tmp_path / "zoo" / "tiny.split.json"
    slices.write_split(split, val, n_train=8, seed=1, fraction=0.25)
    card_path = export.export_checkpoint(
        checkpoint=tmp_path / "best.pt",
        out_dir=tmp_path / "zoo",
        name="tiny",
        version="0.0.0",
        data_dir=tiny["data"],
        split_file=split,
        threads=1,
    )
    card = load_card(card_path)
    assert card.sha256 == sha256_file(tmp_path / "zoo" / "tiny.onnx")
    assert [lb.snomed_code for lb in card.labels] == [
        "393563007",
        "302820008",
        "260413007",
        "254956000",
    ]
    weights, bias = card.cam_weights()
    assert weights.shape == (4, 16)
    assert bias.shape == (4,)
    raw = json.loads(card_path.read_text())
    assert raw["metrics"]["n_images"] == 4
    assert "research use only" in raw["intended_use"].lower()
    resolve_model("tiny", tmp_path / "zoo")  # sha256 verified


@pytest.mark.parametrize("selection", ["last", "best"])
def test_training_keeps_the_selected_epoch_and_the_card_says_so(
    selection: str, shared_data: Path, tmp_path: Path
) -> None:
    torch = _torch()
    data = shared_data / DATASET
    if not data.is_dir():
        pytest.skip(f"data set not found at {data}")
    from tumorlens_train import export, train_slices
    from tumorlens_train.nets2d import NetConfig

    cfg = train_slices.TrainConfig(
        data_dir=data,
        work_dir=tmp_path / "work",
        split_file=tmp_path / "split.json",
        size=32,
        epochs=3,
        batch_size=8,
        threads=1,
        val_fraction=0.3,
        limit_per_class=6,
        checkpoint=selection,
        net=NetConfig(stem_width=8, widths=(8, 16), blocks=(1, 1), strides=(2, 1), dropout=0.0),
    )
    result = train_slices.train(cfg)
    kept = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    history = result.history
    if selection == "last":
        assert kept["epoch"] == 3
    else:
        best = max(history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
        assert kept["epoch"] == best["epoch"]
    assert kept["val_accuracy"] == history[kept["epoch"] - 1]["val_accuracy"]
    stages = export.training_stages(result.best_checkpoint, kept)
    assert stages[-1]["checkpoint_selection"] == selection
    caveat = export.selection_caveat(stages)
    assert ("No checkpoint was chosen" in caveat) == (selection == "last")


def test_training_refuses_an_unknown_selection(tmp_path: Path) -> None:
    _torch()
    from tumorlens_train import train_slices

    cfg = train_slices.TrainConfig(
        data_dir=tmp_path, work_dir=tmp_path, split_file=tmp_path / "s.json", checkpoint="mean"
    )
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        train_slices.train(cfg)


def _second_member(tiny: dict[str, Any]) -> Any:
    """Another tiny member: the trained one with its head weights perturbed (a 'seed')."""
    torch = _torch()
    from tumorlens_train.nets2d import SliceNet

    other = SliceNet(tiny["model"].config)
    other.load_state_dict(tiny["model"].state_dict())
    with torch.no_grad():
        other.head.weight.add_(0.1 * torch.randn_like(other.head.weight))
        other.head.bias.add_(0.05)
    return other.eval()


def test_ensemble_onnx_matches_torch_cam_holds_and_mirror_is_invariant(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    _torch()
    from tumorlens_train import export
    from tumorlens_train.nets2d import SliceEnsemble

    ensemble = SliceEnsemble([tiny["model"], _second_member(tiny)], mirror=True).eval()
    path = tmp_path / "ensemble.onnx"
    export.export_onnx(ensemble, path, SIZE)
    real = tiny["real"]
    assert max(export.verify_onnx(ensemble, path, real, threads=1).values()) <= 1e-4
    assert export.verify_cam(ensemble, path, real) <= 1e-4
    session = session_mod.create_session(path, threads=1, prefer_gpu=False)
    logits, features = session.run(None, {"image": real})
    assert features.shape == (len(real), 4 * 16, SIZE // 4, SIZE // 4)  # 2 members x 2 views
    mirrored, _ = session.run(None, {"image": np.ascontiguousarray(real[..., ::-1])})
    np.testing.assert_allclose(mirrored, logits, atol=1e-4)
    # and it is the mean of the members' views, not just one of them
    single = SliceEnsemble([tiny["model"]], mirror=False).eval()
    export.export_onnx(single, tmp_path / "single.onnx", SIZE)
    one = session_mod.create_session(tmp_path / "single.onnx", threads=1, prefer_gpu=False)
    assert np.abs(one.run(["logits"], {"image": real})[0] - logits).max() > 1e-3


def test_slices_ensemble_command_writes_card_and_refuses_another_split(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    torch = _torch()
    from tumorlens_train import slices
    from tumorlens_train.cli import main

    members = []
    for i, model in enumerate((tiny["model"], _second_member(tiny))):
        path = tmp_path / f"m{i}" / "best.pt"
        path.parent.mkdir()
        torch.save(
            {
                "config": model.config.to_dict(),
                "state_dict": model.state_dict(),
                "epoch": 1,
                "size": SIZE,
                "selection": "last",
                "train_config": {"epochs": 1, "seed": i, "split_seed": 7, "val_fraction": 0.25},
            },
            path,
        )
        members.append(path)
    zoo = tmp_path / "zoo"
    split = zoo / "tiny.split.json"
    slices.write_split(split, tiny["samples"][::PER_CLASS], n_train=8, seed=7, fraction=0.25)
    argv = ["slices-ensemble", "--name", "tiny", "--version", "0.0.1", "--out", str(zoo)]
    argv += ["--data", str(tiny["data"]), "--threads", "1"]
    argv += [a for m in members for a in ("--member", str(m))]
    assert main(argv) == 0
    card = load_card(zoo / "tiny.json")
    assert card.sha256 == sha256_file(zoo / "tiny.onnx")
    weights, _ = card.cam_weights()
    assert weights.shape == (4, 4 * 16)
    raw = json.loads((zoo / "tiny.json").read_text())
    assert raw["architecture"]["forward_passes_per_image"] == 4
    assert [m["seed"] for m in raw["training"]["members"]] == [0, 1]
    assert raw["metrics"]["n_images"] == 4
    assert raw["metrics"]["caveat"].startswith("No checkpoint was chosen")
    variants = {v["variant"]: v for v in raw["metrics"]["variants"]}
    assert list(variants) == [
        "member 1 alone",
        "member 2 alone",
        "member 1 + mirror",
        "member 2 + mirror",
        "members without mirror",
    ]
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in variants.values())
    assert set(variants["member 1 alone"]["sensitivity"]) == set(card.label_names)

    slices.write_split(split, tiny["samples"][::PER_CLASS], n_train=8, seed=8, fraction=0.25)
    with pytest.raises(ValueError, match="split seed 7"):
        main(argv)


def test_member_stages_come_from_the_earlier_card_only_for_the_same_run() -> None:
    _torch()
    from tumorlens_train import export

    def stage(size: int, epochs: int, acc: float, history: int) -> dict[str, Any]:
        return {
            "size": size,
            "epochs": epochs,
            "best_epoch": epochs,
            "best_val_accuracy": acc,
            "val_accuracy_by_epoch": [acc] * history,
        }

    full = [stage(112, 24, 0.95, 24), stage(128, 8, 0.9648, 8)]
    other = [stage(128, 8, 0.96, 8)]
    previous: dict[str, Any] = {
        "name": "slice_type_2d",
        "version": "1.3.0",
        "training": {
            "members": [
                {"checkpoint": "out/a/best.pt", "seed": 0, "stages": full},
                {"checkpoint": "out/b/best.pt", "seed": 1, "stages": other},
            ]
        },
    }
    # a committed checkpoint: only its own last stage, no per-epoch history
    bare = [stage(128, 8, 0.9648, 0)]
    found = export.member_stages_from_card(0, bare, previous)
    assert found is not None
    assert found[0] == full
    assert found[1] == "slice_type_2d 1.3.0 card (out/a/best.pt)"
    assert export.member_stages_from_card(1, bare, previous) is None  # another seed's run
    assert export.member_stages_from_card(0, [stage(128, 8, 0.9649, 0)], previous) is None
    # carried over again from a card that had carried it: the first source is kept
    previous["version"] = "1.4.0"
    previous["training"]["members"][0]["stages_from"] = found[1]
    again = export.member_stages_from_card(0, bare, previous)
    assert again is not None and again[1] == "slice_type_2d 1.3.0 card (out/a/best.pt)"
