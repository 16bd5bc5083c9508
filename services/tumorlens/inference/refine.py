"""Boundary refinement on the study's own grid: where the 3D model is unsure, the images decide.

The model works on a 3 mm grid; its probabilities, upsampled trilinearly, cannot draw a
boundary finer than that, while the study's sequences can (2 mm phantoms, ~1 mm clinical
in-plane). For each of three nested boundaries (whole tumour against background, tumour core
against oedema inside the whole tumour, enhancing tumour against the rest of the core) a linear
discriminant is fitted to that study's confidently labelled voxels on both sides of the
boundary, close to it, and its log-likelihood ratio, times ``strength``, is added to the model's
logit in the uncertain band only. Voxels the model is sure of never change, and the result is
anchored: a refined region keeps only its connected components that contain a voxel of the
model's own region (its unrefined labels), so refinement moves boundaries but never adds a
lesion, a core or an enhancing focus the model did not find (0.7.2 without the anchor added a
0.7 mL "lesion" on the real case from sub-threshold probabilities; ``models/prereg``).
Card: ``postprocessing.boundary_refinement``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from tumorlens.errors import VolumeError
from tumorlens.pipeline.registration import grow_box, support_box

BOUNDARY_REFINEMENT = "boundary_refinement"
#: Internal label indices, on the model grid and the study's (BraTS 0, 1, 2, 4 -> 0..3).
BACKGROUND, CORE, OEDEMA, ENHANCING = 0, 1, 2, 3
#: Fewest confident voxels on either side for a discriminant to be fitted (else: model only).
MIN_SAMPLES = 20
#: The log-likelihood ratio is clipped so one odd voxel cannot outvote a sure model.
MAX_LLR = 8.0


@dataclass(frozen=True)
class BoundaryRefinement:
    """The card's refinement settings; see the module docstring."""

    strength: float
    sample_band_mm: float = 4.5
    confident: float = 0.9  # inside p > confident, outside p < 1 - confident
    uncertain: float = 0.02  # refined where uncertain < p < 1 - uncertain
    # Gaussian smoothing (mm) of the log-likelihood ratio map before it is added (0: none):
    # at ~1 mm in-plane a per-voxel decision follows noise and draws speckle.
    smoothing_mm: float = 0.0
    # Refine only within this distance (mm) of the model's own boundary (inf: the whole band).
    max_shift_mm: float = float("inf")

    @classmethod
    def from_card(cls, card: Mapping[str, Any], source: Path | str) -> BoundaryRefinement | None:
        """``postprocessing.boundary_refinement`` of a card; None when absent or strength 0."""
        raw = (card.get("postprocessing") or {}).get(BOUNDARY_REFINEMENT)
        if raw is None:
            return None
        try:
            settings = cls(
                strength=float(raw["strength"]),
                sample_band_mm=float(raw.get("sample_band_mm", cls.sample_band_mm)),
                confident=float(raw.get("confident", cls.confident)),
                uncertain=float(raw.get("uncertain", cls.uncertain)),
                smoothing_mm=float(raw.get("smoothing_mm", cls.smoothing_mm)),
                max_shift_mm=float(raw.get("max_shift_mm", cls.max_shift_mm)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VolumeError(
                f"{source}: postprocessing.{BOUNDARY_REFINEMENT} needs numeric settings "
                f"('strength' required): {raw!r}"
            ) from exc
        values = (
            settings.strength,
            settings.sample_band_mm,
            settings.confident,
            settings.uncertain,
            settings.smoothing_mm,
        )
        if not (
            all(np.isfinite(values))
            and settings.smoothing_mm >= 0
            and settings.max_shift_mm > 0
            and settings.strength >= 0
            and settings.sample_band_mm > 0
            and 0.5 < settings.confident < 1
            and 0 < settings.uncertain < 0.5
        ):
            raise VolumeError(
                f"{source}: postprocessing.{BOUNDARY_REFINEMENT} out of range: {raw!r}"
            )
        return settings if settings.strength > 0 else None

    def to_dict(self) -> dict[str, float]:
        out = {
            "strength": self.strength,
            "sample_band_mm": self.sample_band_mm,
            "confident": self.confident,
            "uncertain": self.uncertain,
            "smoothing_mm": self.smoothing_mm,
        }
        if np.isfinite(self.max_shift_mm):  # JSON has no infinity: absent means no cap
            out["max_shift_mm"] = self.max_shift_mm
        return out


def linear_discriminant(
    features: NDArray[np.float32], inside: NDArray[np.bool_], outside: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], float] | None:
    """Fisher's discriminant between two voxel sets of ``features`` ``(C, ...)``: weights and
    offset such that ``w . x + offset`` is the log-likelihood ratio inside : outside under
    Gaussians with a shared covariance. None when either set is too small."""
    n_in, n_out = int(inside.sum()), int(outside.sum())
    if n_in < MIN_SAMPLES or n_out < MIN_SAMPLES:
        return None
    a = features[:, inside].astype(np.float64)
    b = features[:, outside].astype(np.float64)
    mean_a, mean_b = a.mean(axis=1), b.mean(axis=1)
    pooled = (np.cov(a) * (n_in - 1) + np.cov(b) * (n_out - 1)) / (n_in + n_out - 2)
    pooled = np.atleast_2d(pooled)
    # A ridge relative to the total variance: a flat channel cannot make it singular.
    pooled += np.eye(len(mean_a)) * 1e-6 * max(float(np.trace(pooled)), 1e-12)
    weights = np.linalg.solve(pooled, mean_a - mean_b)
    return weights, float(-weights @ (mean_a + mean_b) / 2.0)


def anchored(region: NDArray[np.bool_], anchor: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The connected components (26-connected) of ``region`` that contain an ``anchor`` voxel."""
    components, count = ndimage.label(region, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return region
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(components[anchor & region])] = True
    keep[0] = False
    out: NDArray[np.bool_] = keep[components]
    return out


def refine_boundary(
    p_inside: NDArray[np.float32],
    features: NDArray[np.float32],
    domain: NDArray[np.bool_],
    spacing: NDArray[np.float64],
    settings: BoundaryRefinement,
    *,
    anchor: NDArray[np.bool_] | None = None,
) -> NDArray[np.bool_]:
    """One boundary: the voxels of ``domain`` that end up inside, given the model's
    probability of inside and the study's ``features`` ``(C, ...)`` on the same grid; with
    ``anchor``, only components of the result that touch it are kept.

    Computed in the bounding box of ``domain`` grown by one voxel and the smoothing kernel's
    reach, which gives the same result as the whole grid: everything outside the domain is
    outside, so the margin holds the nearest outside voxel of every inside one, and the
    smoothed ratio at a domain voxel only reads voxels within the kernel's reach
    (``bench/refine.py`` times both routes; a test checks them equal).
    """
    box = _domain_box(domain, spacing, settings)
    out = np.zeros(domain.shape, dtype=bool)
    if box is None:
        return out
    out[box] = _refine_boundary_in_box(
        p_inside[box],
        features[(slice(None), *box)],
        domain[box],
        spacing,
        settings,
        anchor=None if anchor is None else anchor[box],
    )
    return out


def _domain_box(
    domain: NDArray[np.bool_], spacing: NDArray[np.float64], settings: BoundaryRefinement
) -> tuple[slice, ...] | None:
    """``domain``'s bounding box with the margin :func:`refine_boundary` needs (at least
    one voxel, plus the smoothing kernel's radius); None when empty."""
    box = support_box(domain, np.eye(4), domain.shape)  # >= 2 voxels of margin
    if box is None or settings.smoothing_mm <= 0:
        return box
    # gaussian_filter's kernel radius is int(4 * sigma + 0.5) voxels (truncate 4).
    sigma = settings.smoothing_mm / np.asarray(spacing, dtype=np.float64)
    return grow_box(box, [int(4.0 * s + 0.5) for s in sigma], domain.shape)


def _refine_boundary_in_box(
    p_inside: NDArray[np.float32],
    features: NDArray[np.float32],
    domain: NDArray[np.bool_],
    spacing: NDArray[np.float64],
    settings: BoundaryRefinement,
    *,
    anchor: NDArray[np.bool_] | None = None,
) -> NDArray[np.bool_]:
    """:func:`refine_boundary` on arrays already cropped to its box."""
    inside = (p_inside > 0.5) & domain
    depth = ndimage.distance_transform_edt(inside, sampling=spacing)
    reach = ndimage.distance_transform_edt(~inside, sampling=spacing)
    fit = linear_discriminant(
        features,
        (p_inside > settings.confident) & (depth <= settings.sample_band_mm) & domain,
        (p_inside < 1.0 - settings.confident) & (reach <= settings.sample_band_mm) & domain,
    )
    if fit is None:
        return inside
    weights, offset = fit
    band = (p_inside > settings.uncertain) & (p_inside < 1.0 - settings.uncertain) & domain
    if np.isfinite(settings.max_shift_mm):
        band &= np.where(inside, depth, reach) <= settings.max_shift_mm
    if not band.any():
        return inside
    p = np.clip(p_inside[band].astype(np.float64), 1e-6, 1.0 - 1e-6)
    llr = np.tensordot(weights, features.astype(np.float64), axes=(0, 0)) + offset
    llr = np.clip(llr, -MAX_LLR, MAX_LLR)
    if settings.smoothing_mm > 0:
        llr = ndimage.gaussian_filter(llr, sigma=settings.smoothing_mm / spacing)
    out = inside.copy()
    out[band] = np.log(p / (1.0 - p)) + settings.strength * llr[band] > 0
    return out if anchor is None else anchored(out, anchor)


def refine_labels(
    probs: NDArray[np.float32],
    features: NDArray[np.float32],
    spacing: NDArray[np.float64],
    settings: BoundaryRefinement,
) -> NDArray[np.uint8]:
    """Class probabilities ``(4, ...)`` and the study's sequences ``(C, ...)``, both on the
    label grid -> labels: whole tumour, then core inside it, then enhancing inside the core,
    each anchored on the model's own labels (the argmax of ``probs``)."""
    total = np.maximum(probs.sum(axis=0), 1e-6)
    tumour = np.maximum(probs[1:].sum(axis=0), 1e-6)
    tumour_core = np.maximum(probs[CORE] + probs[ENHANCING], 1e-6)
    plain = np.argmax(probs, axis=0)
    everywhere = np.ones(probs.shape[1:], dtype=bool)
    whole = refine_boundary(
        (1.0 - probs[BACKGROUND] / total).astype(np.float32),
        features,
        everywhere,
        spacing,
        settings,
        anchor=plain != BACKGROUND,
    )
    core = refine_boundary(
        ((probs[CORE] + probs[ENHANCING]) / tumour).astype(np.float32),
        features,
        whole,
        spacing,
        settings,
        anchor=(plain == CORE) | (plain == ENHANCING),
    )
    enhancing = refine_boundary(
        (probs[ENHANCING] / tumour_core).astype(np.float32),
        features,
        core,
        spacing,
        settings,
        anchor=plain == ENHANCING,
    )
    labels = np.where(whole, OEDEMA, BACKGROUND).astype(np.uint8)
    labels[core] = CORE
    labels[enhancing] = ENHANCING
    return labels
