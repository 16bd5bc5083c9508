"""Model cards: the JSON file shipped next to each ONNX model, and loading a model by name or
path with its sha256 checked, so the service never runs weights the card does not describe."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tumorlens.errors import ModelCardError, ModelIntegrityError

CARD_SUFFIX = ".json"
MODEL_SUFFIX = ".onnx"


@dataclass(frozen=True)
class Label:
    index: int
    name: str
    display: str
    snomed_code: str
    snomed_display: str
    aliases: tuple[str, ...] = ()

    def matches(self, folder: str) -> bool:
        """Whether a class folder name means this label (case-insensitive, aliases too)."""
        key = folder.casefold()
        return key == self.name.casefold() or key in {a.casefold() for a in self.aliases}


@dataclass(frozen=True)
class ModelCard:
    """The parts of a card code relies on; ``raw`` keeps the whole document."""

    name: str
    version: str
    file: str
    sha256: str
    input_name: str
    input_size: int
    input_channels: int
    output_names: tuple[str, ...]
    labels: tuple[Label, ...]
    raw: dict[str, Any]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def cam_weights(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The linear head ``(weights [K, C], bias [K])`` for class activation maps."""
        try:
            cam = self.raw["cam"]
            weights = np.asarray(cam["weights"], dtype=np.float32)
            bias = np.asarray(cam["bias"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCardError(f"model card {self.name}: no usable cam weights: {exc}") from exc
        if (
            weights.ndim != 2
            or weights.shape[0] != len(self.labels)
            or bias.shape != (len(self.labels),)
        ):
            raise ModelCardError(f"model card {self.name}: cam weights have the wrong shape")
        return weights, bias


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def parse_card(data: dict[str, Any], source: str = "card") -> ModelCard:
    """Validate and wrap a card document."""
    try:
        spec = data["inputs"][0]
        labels = tuple(
            Label(
                index=int(item["index"]),
                name=str(item["name"]),
                display=str(item.get("display", item["name"])),
                snomed_code=str(item["snomed_ct"]["code"]),
                snomed_display=str(item["snomed_ct"]["display"]),
                aliases=tuple(str(a) for a in item.get("aliases", ())),
            )
            for item in data["labels"]
        )
        card = ModelCard(
            name=str(data["name"]),
            version=str(data["version"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]).lower(),
            input_name=str(spec["name"]),
            input_size=int(spec["size"]),
            input_channels=int(spec["channels"]),
            output_names=tuple(str(o["name"]) for o in data["outputs"]),
            labels=labels,
            raw=data,
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelCardError(f"{source}: malformed model card: {exc!r}") from exc
    if [label.index for label in labels] != list(range(len(labels))):
        raise ModelCardError(f"{source}: label indices must be 0..{len(labels) - 1} in order")
    return card


def load_card(path: Path) -> ModelCard:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelCardError(f"model card {path} not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"cannot read model card {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelCardError(f"{path}: a model card is a JSON object")
    return parse_card(data, str(path))


def resolve_model(ref: str | Path, models_dir: Path, verify: bool = True) -> tuple[Path, ModelCard]:
    """Find a model by name (``models_dir/<name>.json``) or by a path to its card or ONNX file;
    returns ``(onnx_path, card)``, checking the sha256 unless ``verify`` is false."""
    path = Path(ref)
    if path.suffix in (CARD_SUFFIX, MODEL_SUFFIX) or path.exists():
        card_path = path.with_suffix(CARD_SUFFIX)
    else:
        card_path = models_dir / f"{ref}{CARD_SUFFIX}"
    card = load_card(card_path)
    model_path = card_path.parent / card.file
    if not model_path.is_file():
        raise ModelCardError(f"model file {model_path} (named by {card_path}) not found")
    if verify:
        actual = sha256_file(model_path)
        if actual != card.sha256:
            raise ModelIntegrityError(
                f"{model_path}: sha256 {actual} does not match its card ({card.sha256})"
            )
    return model_path, card
