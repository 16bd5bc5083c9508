"""One synthetic case from a seed: four MRI sequences, a label map and metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .acquisition import acquire, sample_acquisition
from .anatomy import (
    Tissue,
    apply_mass_effect,
    pituitary_gland,
    random_deformation,
    sample_head_surfaces,
    sample_tissue,
)
from .contrast import SEQUENCES, sample_contrast, soften_lesion_contrast, synthesise, t1ce_uptake
from .fields import FloatArray
from .head import head_fractions, intracranial_fraction, sample_head
from .labels import GRADE, Label, TumourType
from .sinuses import sample_sinuses, sinus_fraction, sinus_signal
from .template import DEFAULT_SPACING_MM, load_template
from .tumours import plan_tumour, render_tumour

#: Bumped whenever the same seed would produce different data.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class PhantomConfig:
    """Dataset-wide settings (everything per-case comes from the seed)."""

    spacing: float = DEFAULT_SPACING_MM
    full_head: bool = True
    thick_slice_prob: float = 0.25  # chance that a given sequence is a 2D thick-slice stack
    # Per-case conspicuity of non-enhancing tumour and oedema, drawn from U(low, high): 1 keeps
    # the base contrast, lower moves their signal towards white matter's (see
    # contrast.soften_lesion_contrast). (1, 1), the default, draws nothing: same data as before.
    lesion_conspicuity: tuple[float, float] = (1.0, 1.0)
    # Dural venous sinuses (see sinuses.py), full-head phantoms only. Off by default: on,
    # it changes images near the sinuses and nothing else (labels, other voxels, draws).
    dural_sinuses: bool = False
    # Per-case T1c gain of non-enhancing tumour and oedema, drawn from U(low, high): mild
    # uptake that stays below enhancement and keeps its labels (contrast.t1ce_uptake). (1, 1),
    # the default, draws nothing: same data as before.
    t1ce_uptake: tuple[float, float] = (1.0, 1.0)


@dataclass
class Phantom:
    """A generated case on the working grid (arrays indexed x, y, z in RAS order)."""

    images: dict[str, FloatArray]  # t1, t1ce, t2, flair in arbitrary scanner units
    seg: npt.NDArray[np.uint8]  # internal labels 0/1/2/3 (see labels.Label)
    affine: npt.NDArray[np.float64]  # voxel -> RAS mm
    tissue: dict[str, FloatArray]  # healthy gm/wm/csf/brain fractions before the tumour
    compartments: npt.NDArray[np.uint8]  # tumours.Compartment per voxel
    metadata: dict[str, Any] = field(default_factory=dict)


def _volumes_ml(seg: npt.NDArray[np.uint8], spacing: float) -> dict[str, float]:
    voxel_ml = spacing**3 / 1000.0
    counts = np.bincount(seg.ravel(), minlength=4) * voxel_ml
    core = counts[Label.CORE] + counts[Label.ENHANCING]
    return {
        "necrotic_core": round(float(counts[Label.CORE]), 3),
        "oedema": round(float(counts[Label.OEDEMA]), 3),
        "enhancing": round(float(counts[Label.ENHANCING]), 3),
        "tumour_core": round(float(core), 3),
        "whole_tumour": round(float(core + counts[Label.OEDEMA]), 3),
    }


def generate_case(
    seed: int,
    tumour_type: TumourType | str | None = None,
    config: PhantomConfig | None = None,
) -> Phantom:
    """Generate one phantom; the same (seed, type, config) always gives identical arrays.

    Without ``tumour_type`` the type is drawn from the seed. Each stage draws from its own
    child seed so changing, say, the noise model leaves anatomy and tumours unchanged.
    """
    config = config or PhantomConfig()
    seq = np.random.SeedSequence(seed)
    r_type, r_anat, r_tumour, r_contrast, r_acq, r_lesion, r_sinus, r_uptake = (
        np.random.default_rng(s) for s in seq.spawn(8)
    )  # later children leave the earlier ones, and so datasets made before them, unchanged
    ttype = TumourType(tumour_type) if tumour_type else TumourType(r_type.choice(list(TumourType)))

    template = load_template(config.spacing)
    grid = template.grid
    atlas, deformation = random_deformation(grid, r_anat)
    head = sample_head(r_anat)
    plan = plan_tumour(ttype, template, r_tumour)

    envelope_sd, head_sd = sample_head_surfaces(template, atlas)
    intracranial = intracranial_fraction(envelope_sd, head, grid.spacing)
    source = apply_mass_effect(atlas, plan.mass_effects())
    pushed = sample_tissue(template, source)
    # Tissue pushed past the dura by mass effect is squeezed out, not drawn inside the skull.
    tissue = Tissue(*(m * intracranial for m in (pushed.gm, pushed.wm, pushed.csf, pushed.brain)))
    rendered = render_tumour(plan, atlas, tissue, intracranial > 0.5, grid=grid, rng=r_tumour)

    extra = np.clip(intracranial - tissue.brain, 0.0, 1.0)  # inside the dura, outside brain
    gland = np.minimum(pituitary_gland(source, grid.spacing), extra)
    healthy: dict[str, FloatArray] = {
        "wm": tissue.wm,
        "gm": tissue.gm,
        "csf": tissue.csf,
        "gland": gland,
        "extra_csf": extra - gland,
    }
    if config.full_head:
        healthy |= head_fractions(envelope_sd, head_sd, head, grid.spacing, r_anat)
    contrast = sample_contrast(r_contrast)
    conspicuity = 1.0
    low, high = config.lesion_conspicuity
    if (low, high) != (1.0, 1.0):
        conspicuity = float(r_lesion.uniform(low, high))
        contrast = soften_lesion_contrast(contrast, conspicuity)
    uptake = 1.0
    if config.t1ce_uptake != (1.0, 1.0):
        uptake = float(r_uptake.uniform(*config.t1ce_uptake))
        contrast = t1ce_uptake(contrast, uptake)
    sinuses: dict[str, float] | None = None
    if config.dural_sinuses and config.full_head:
        sinuses = sample_sinuses(r_sinus)
        # Blood, not tumour: where a tumour lies the tumour is drawn (synthesise replaces it).
        sinus = sinus_fraction(atlas, envelope_sd, head["dura_offset_mm"], grid.spacing)
        healthy = {name: f * (1.0 - sinus) for name, f in healthy.items()} | {"sinus": sinus}
        contrast = contrast | {"sinus": sinus_signal(sinuses)}
    clean = synthesise(healthy, rendered.compartments, contrast, r_contrast, grid.spacing)

    foreground = None
    if not config.full_head:
        # Skull-stripped like BraTS: exact zeros outside brain and tumour.
        foreground = (tissue.brain > 0.5) | (rendered.compartments > 0)
    images: dict[str, FloatArray] = {}
    acquisitions: dict[str, Any] = {}
    for name in SEQUENCES:
        acq = sample_acquisition(r_acq, grid.spacing, config.thick_slice_prob)
        image = acquire(clean[name], acq, grid.spacing, r_acq)
        if foreground is not None:
            image = np.where(foreground, image, np.float32(0.0))
        images[name] = image
        acquisitions[name] = acq.describe()

    seg = rendered.labels
    metadata: dict[str, Any] = {
        "seed": int(seed),
        "tumour_type": ttype.value,
        "grade": GRADE[ttype],
        "lesion_count": len(rendered.lesions),
        "lesions": rendered.lesions,
        "volumes_ml": _volumes_ml(seg, grid.spacing),
        "spacing_mm": grid.spacing,
        "shape": list(grid.shape),
        "full_head": config.full_head,
        "thick_slice_prob": config.thick_slice_prob,
        "lesion_conspicuity": round(conspicuity, 4),
        "dural_sinuses": None if sinuses is None else {k: round(v, 3) for k, v in sinuses.items()},
        "t1ce_uptake": round(uptake, 4),
        "generator_version": GENERATOR_VERSION,
        "template": "MNI ICBM152 2009a symmetric (nilearn)",
        "deformation": deformation,
        "head": {k: round(v, 2) for k, v in head.items()},
        "contrast": {k: np.round(v, 3).tolist() for k, v in contrast.items()},
        "acquisition": acquisitions,
    }
    return Phantom(
        images=images,
        seg=seg,
        affine=grid.affine,
        tissue=tissue.as_dict(),
        compartments=rendered.compartments,
        metadata=metadata,
    )


def case_seed(dataset_seed: int, index: int) -> int:
    """Seed of case ``index`` in a dataset; stored in its metadata to regenerate it alone."""
    return int(np.random.SeedSequence([dataset_seed, index]).generate_state(1)[0])


def case_type(types: Sequence[TumourType], index: int) -> TumourType:
    """Round-robin type assignment, so any run of consecutive cases is balanced."""
    return types[index % len(types)]
