"""Runtime pieces of slice evaluation (no torch): preprocessing, model cards, folder rules,
the ONNX Runtime session factory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tumorlens.errors import EvaluationDataError, SliceImageError
from tumorlens.evaluation.slices import collect_images
from tumorlens.inference import session as session_mod
from tumorlens.inference.cam import class_activation_maps, upsample
from tumorlens.inference.card import (
    ModelCardError,
    ModelIntegrityError,
    parse_card,
    resolve_model,
    sha256_file,
)
from tumorlens.inference.preprocess import preprocess_file, preprocess_image

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models/tumorlens_zoo/slice_type_2d.onnx"


def _phantom(width: int = 48, height: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(width, height) / 3) ** 2
    return (disc * 180 + (xx % 7) * 5).astype(np.uint8)


def _card(**over: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "name": "m",
        "version": "1",
        "file": "m.onnx",
        "sha256": "ab",
        "inputs": [{"name": "image", "size": 32, "channels": 1}],
        "outputs": [{"name": "logits"}, {"name": "features"}],
        "labels": [
            {"index": 0, "name": "glioma", "snomed_ct": {"code": "393563007", "display": "G"}},
            {
                "index": 1,
                "name": "notumor",
                "snomed_ct": {"code": "260413007", "display": "None"},
                "aliases": ["no_tumor"],
            },
        ],
    }
    card.update(over)
    return card


# --- preprocessing ----------------------------------------------------------------------------


def test_preprocess_gives_zero_mean_unit_std_float32() -> None:
    out = preprocess_image(Image.fromarray(_phantom()), 32)
    assert out.shape == (1, 32, 32)
    assert out.dtype == np.float32
    assert abs(float(out.mean())) < 1e-5
    assert float(out.std()) == pytest.approx(1.0, abs=1e-4)


def test_grey_rgb_copies_preprocess_identically() -> None:
    grey = _phantom()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    np.testing.assert_array_equal(
        preprocess_image(Image.fromarray(grey), 32), preprocess_image(Image.fromarray(rgb), 32)
    )


def test_non_square_is_padded_not_stretched() -> None:
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 18:22] = 255  # a vertical bar in the middle
    out = preprocess_image(Image.fromarray(wide), 40)[0]
    # 10 rows of padding above and below keep the bar 20 rows tall, centred.
    assert float(out[:9].std()) == 0.0
    assert float(out[31:].std()) == 0.0
    assert out[20, 20] > out[20, 5]


def test_constant_image_does_not_divide_by_zero() -> None:
    out = preprocess_image(Image.new("L", (16, 16), 77), 8)
    assert np.all(out == 0.0)


def test_wrong_channel_count_and_garbage_are_refused(tmp_path: Path) -> None:
    Image.new("RGBA", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(SliceImageError, match=r"a\.png: 4 channel\(s\) \(mode RGBA\)") as info:
        preprocess_file(tmp_path / "a.png", 8)
    assert info.value.reason.startswith("4 channel(s)")
    with pytest.raises(SliceImageError, match=r"b\.jpg: cannot decode"):
        preprocess_file(tmp_path / "b.jpg", 8)


# --- CAM --------------------------------------------------------------------------------------


def test_cam_mean_is_the_linear_head() -> None:
    rng = np.random.default_rng(0)
    features = rng.random((2, 5, 3, 3), dtype=np.float32)
    weights = rng.standard_normal((4, 5)).astype(np.float32)
    maps = class_activation_maps(features, weights)
    assert maps.shape == (2, 4, 3, 3)
    np.testing.assert_allclose(
        maps.mean(axis=(2, 3)), features.mean(axis=(2, 3)) @ weights.T, rtol=1e-5, atol=1e-6
    )
    heat = upsample(maps[0, 0], 12)
    assert heat.shape == (12, 12)
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 + 1e-6


# --- model cards ------------------------------------------------------------------------------


def test_card_parsing_and_aliases() -> None:
    card = parse_card(_card())
    assert card.label_names == ("glioma", "notumor")
    assert card.labels[1].matches("No_Tumor")
    assert not card.labels[0].matches("astrocytoma")
    with pytest.raises(ModelCardError, match="malformed"):
        parse_card(_card(labels=[{"index": 0}]))
    with pytest.raises(ModelCardError, match="label indices"):
        parse_card(_card(labels=list(reversed(_card()["labels"]))))


def test_resolve_model_checks_sha256(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"weights")
    card = _card(sha256=sha256_file(tmp_path / "m.onnx"))
    (tmp_path / "m.json").write_text(json.dumps(card))
    path, loaded = resolve_model("m", tmp_path)
    assert path == tmp_path / "m.onnx"
    assert resolve_model(tmp_path / "m.onnx", Path("/nonexistent"))[1] == loaded
    (tmp_path / "m.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError, match="does not match"):
        resolve_model("m", tmp_path)
    with pytest.raises(ModelCardError, match="not found"):
        resolve_model("other", tmp_path)


# --- folder rules -----------------------------------------------------------------------------


def test_collect_images_maps_aliases_and_filters_split(tmp_path: Path) -> None:
    card = parse_card(_card())
    for folder in ("glioma", "no_tumor"):
        (tmp_path / folder).mkdir()
        for i in range(2):
            Image.fromarray(_phantom()).save(tmp_path / folder / f"{i}.jpg")
    (tmp_path / "glioma" / "readme.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    images = collect_images(tmp_path, card)
    assert [(im.name, im.label) for im in images] == [
        ("glioma/0.jpg", 0),
        ("glioma/1.jpg", 0),
        ("no_tumor/0.jpg", 1),
        ("no_tumor/1.jpg", 1),
    ]
    assert [im.name for im in collect_images(tmp_path, card, {"glioma/1.jpg"})] == ["glioma/1.jpg"]
    (tmp_path / "meningioma").mkdir()
    with pytest.raises(EvaluationDataError, match="unknown class folder"):
        collect_images(tmp_path, card)


# --- session factory --------------------------------------------------------------------------


def _shipped_model() -> Path:
    if not SHIPPED.is_file():
        pytest.skip("models/tumorlens_zoo/slice_type_2d.onnx not built")
    return SHIPPED


def test_choose_providers_prefers_cuda_only_when_installed() -> None:
    cpu_only = session_mod.choose_providers(["CPUExecutionProvider"])
    assert cpu_only == ["CPUExecutionProvider"]
    both = session_mod.choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert both[0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert both[-1] == "CPUExecutionProvider"
    assert session_mod.choose_providers(
        ["CUDAExecutionProvider", "CPUExecutionProvider"], prefer_gpu=False
    ) == ["CPUExecutionProvider"]


def test_session_uses_cpu_when_cuda_provider_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _shipped_model()
    monkeypatch.setattr(
        session_mod.ort, "get_available_providers", lambda: ["CPUExecutionProvider"]
    )
    session = session_mod.create_session(model, threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_session_falls_back_to_cpu_when_cuda_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _shipped_model()
    real_session = session_mod.ort.InferenceSession
    attempts: list[list[Any]] = []

    def fake_session(path: str, sess_options: Any, providers: list[Any]) -> Any:
        attempts.append(providers)
        if any("CUDA" in str(p) for p in providers):
            raise RuntimeError("CUDA driver not found")
        return real_session(path, sess_options=sess_options, providers=providers)

    # Pretend the CUDA provider is installed but cannot start on this machine.
    monkeypatch.setattr(
        session_mod.ort,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(session_mod.ort, "InferenceSession", fake_session)
    session = session_mod.create_session(model, threads=1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert len(attempts) == 2
    assert attempts[1] == ["CPUExecutionProvider"]
