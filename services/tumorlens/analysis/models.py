"""The models a worker process loads once and keeps: the 3D tumour model and the 2D classifier."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tumorlens.analysis.slice_opinion import SliceClassifier
from tumorlens.config import Settings
from tumorlens.errors import ConfigurationError, TumorlensError
from tumorlens.inference.volume_model import VolumeModel
from tumorlens.pipeline.brain_mask import load_mni_template
from tumorlens.writers.codes import Concept
from tumorlens.writers.findings import SLICE_CLASSIFICATION, ModelIdentity, TypeProbability

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSet:
    volume: VolumeModel
    slices: SliceClassifier | None

    @classmethod
    def load(cls, settings: Settings) -> ModelSet:
        """Sessions for the configured models (sha256 checked), the MNI template read once.

        The 2D classifier is optional: without it the study opinion is the 3D model's alone.
        """
        try:
            volume = VolumeModel(
                settings.segmentation_model, settings.models_dir, settings.inference_threads
            )
        except TumorlensError as exc:
            raise ConfigurationError(f"segmentation model: {exc}") from exc
        slices = None
        if settings.slice_model:
            try:
                slices = SliceClassifier(
                    settings.slice_model, settings.models_dir, settings.inference_threads
                )
            except TumorlensError as exc:
                raise ConfigurationError(f"slice model: {exc}") from exc
        load_mni_template(settings.models_dir)
        LOG.info(
            "models loaded: %s %s (%s)%s",
            volume.card.name,
            volume.card.version,
            ", ".join(volume.providers),
            f", {slices.card.name} {slices.card.version}" if slices else "",
        )
        return cls(volume, slices)

    def identities(self) -> tuple[ModelIdentity, ...]:
        card = self.volume.card
        out = [ModelIdentity(card.name, card.version, card.sha256, "segmentation")]
        if self.slices is not None:
            out.append(ModelIdentity.from_card(self.slices.card, task=SLICE_CLASSIFICATION))
        return tuple(out)

    def subset_note(self, present: tuple[str, ...]) -> str | None:
        """A note when the 3D model's card does not list ``present`` (model channel names) among
        the sequence subsets it was validated on; None when it does or lists none."""
        spec = self.volume.card.raw["inputs"][0]
        listed = spec.get("validated_subsets")
        if not isinstance(listed, list) or not listed:
            return None
        subsets = [frozenset(str(s) for s in subset) for subset in listed]
        if frozenset(present) in subsets:
            return None
        known = "; ".join("+".join(sorted(subset)) for subset in subsets)
        return (
            f"the 3D model ran on {'+'.join(present)}, a sequence subset its card does not"
            f" report validation for (validated: {known})"
        )

    def volume_types(self, probabilities: Any) -> tuple[TypeProbability, ...]:
        """The 3D model's type probabilities with each label's concept from its card."""
        return tuple(
            TypeProbability(
                name=str(label["name"]),
                display=str(label.get("display", label["name"])),
                concept=_concept(label),
                probability=float(p),
            )
            for label, p in zip(self.volume.card.raw["labels"], probabilities, strict=True)
        )

    def slice_types(self, probabilities: dict[str, float]) -> tuple[TypeProbability, ...]:
        if self.slices is None:
            return ()
        return tuple(
            TypeProbability(
                name=label.name,
                display=label.display,
                concept=Concept(label.snomed_code, label.snomed_display),
                probability=float(probabilities[label.name]),
            )
            for label in self.slices.card.labels
        )


def _concept(label: dict[str, Any]) -> Concept:
    code = label.get("snomed_ct")
    if not isinstance(code, dict):
        raise ConfigurationError(f"model card label {label.get('name')!r} has no SNOMED CT code")
    return Concept(str(code["code"]), str(code["display"]))
