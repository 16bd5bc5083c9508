"""Brain extraction for full-head clinical input, and the subject's place in MNI space.

Real studies are full-head, often 5 mm thick and low in grey/white contrast; the shipped MNI
ICBM152 2009a template (2 mm, see ``tumorlens_train.template_export``) is skull-stripped. Its
T1 intensities proved a poor registration target for such input (the head/air and scalp edges
dominate any intensity cost and pull the brain onto the scalp), so the fit is by shape:

1. a provisional brain mask from intensities on the study grid: head (Otsu), tissue brighter
   than 0.55 of the head's modal (brain) intensity, opened in-plane by 3 mm (skull and scalp
   are thin shells), deeper than 16 mm under the skin, largest component, grown back within
   the tissue by 4 mm: this cuts the brain free of the scalp at the dark skull, or about
   12 mm under the skin where the skull is not dark;
2. the template brain mask registered onto it at 4 mm: rigid, then one isotropic scale
   (7 DOF; through-plane 5 mm data and the provisional mask's leaks into the face do not
   support per-axis scales or shears), by correlation ratio over the template's brain and a
   12 mm ring, counting only the vault (MNI z > -20 mm) where step 1 is reliable;
3. the template mask, dilated by 2 mm, warped onto the study grid, joined by the pituitary
   fossa (a ball around the sella turcica in MNI space): the template's brain mask stops at
   the diaphragma sellae, and a pituitary adenoma outside the mask would be cut away with the
   skull before the 3D model sees it, and then dropped by the findings as extracranial.

A mask whose volume is implausible (outside 900-2100 mL), that is not centred in the head, or
that disagrees with the provisional mask is replaced by the provisional mask, with a warning.

The fitted MNI -> subject affine is returned with its inverse, so preprocessing can resample
the subject straight into the MNI-centred model grid that the phantoms and models live in.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from tumorlens.errors import ConfigurationError
from tumorlens.pipeline.grid import AlignedStudy, voxel_volume_ml
from tumorlens.pipeline.registration import (
    Affine,
    BoolArray,
    FloatArray,
    box_affine,
    fill_holes,
    head_mask,
    largest_component,
    register,
    resample,
    resample_isotropic,
    support_box,
)
from tumorlens.pipeline.volumes import nifti_image

LOG = logging.getLogger(__name__)

TEMPLATE_MASK_FILE: Final = "mni_icbm152_2009a_brainmask_2mm.nii.gz"
SUBJECT_ORDER: Final = ("t1", "t1c", "t2", "flair")
REGISTRATION_SPACING_MM: Final = 4.0
#: Plausible intracranial volume inside the field of view (mL), judged on the undilated
#: mask. The template's own mask (brain, CSF and brainstem to the foramen magnum) is 1890 mL,
#: larger than most adults' (MNI152 is a large brain), hence 2100 rather than 2000.
MIN_BRAIN_ML: Final = 900.0
MAX_BRAIN_ML: Final = 2100.0
#: The mask centre may sit this far (mm) left or right of the head's centre.
MAX_OFF_CENTRE_MM: Final = 15.0
#: Least Dice between the fitted and the provisional mask.
MIN_AGREEMENT: Final = 0.75
#: Search range around the start: translation mm, rotation degrees, scale and shear percent.
#: The start guesses no rotation, and heads lie pitched in the scanner: TCGA-FG-6692's is
#: 33 degrees chin-down from MNI's orientation. A 20 degree range held its fit at 20, which
#: tilted the template's frontal base down into the ethmoid and between the globes.
SEARCH_RANGE: Final = (30.0, 40.0, 20.0, 8.0)
#: Template points below this MNI z (skull base, face) are left out of the fit.
VAULT_MIN_Z_MM: Final = -20.0
_SCALP_MM: Final = 10.0  # skull + scalp at the vertex, for the start
_TEMPLATE_HEAD_WIDTH_MM: Final = 160.0  # head width around the template brain, for the start
_RING_VOXELS: Final = 3  # of 4 mm: the surroundings sampled with the template brain
_CORE_DEPTH_MM: Final = 16.0  # deeper than scalp and skull
_REGROW_MM: Final = 4.0
_TISSUE_FRACTION: Final = 0.55  # of the modal head intensity: below is bone, air or CSF
#: Sella turcica in MNI 2009a: below the hypothalamus and optic chiasm, in front of the pons,
#: between the temporal poles; outside the template's brain mask (the phantoms use it too).
SELLA_MNI_MM: Final = (0.0, 2.0, -30.0)
#: Radius (mm) of the pituitary fossa region added to the mask: the fossa (~12 x 10 x 8 mm)
#: and a macroadenoma of up to ~3 cm growing out of it.
SELLAR_REGION_MM: Final = 16.0


@dataclass(frozen=True)
class MniTemplate:
    """The template's brain mask and the sellar region, on one grid; the template T1 is
    shipped too but not used (see module docstring)."""

    mask: FloatArray  # 0/1
    affine: Affine
    sellar_region: FloatArray  # 0/1: ball of SELLAR_REGION_MM around SELLA_MNI_MM
    dilated: FloatArray  # 0/1: ``mask`` dilated by one voxel (2 mm), the mask a study gets


def sellar_region(shape: tuple[int, ...], affine: Affine) -> FloatArray:
    """0/1 ball of :data:`SELLAR_REGION_MM` around :data:`SELLA_MNI_MM` on an MNI grid."""
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ grid + affine[:3, 3:4]
    inside = ((world - np.reshape(SELLA_MNI_MM, (3, 1))) ** 2).sum(axis=0) <= SELLAR_REGION_MM**2
    region: FloatArray = inside.reshape(shape).astype(np.float32)
    return region


@dataclass(frozen=True)
class BrainMask:
    """The brain mask on the study grid and where the subject lies in MNI space."""

    mask: npt.NDArray[np.uint8]  # on the aligned study's grid
    affine: Affine  # = the aligned study's affine
    method: str  # "template registration" or "intensity heuristic"
    volume_ml: float
    subject_to_mni: Affine  # subject RAS mm -> MNI mm
    mni_to_subject: Affine
    agreement: float  # Dice of the fitted template mask with the provisional mask
    subject_sequence: str
    seconds: float
    warnings: tuple[str, ...] = ()

    def image(self) -> nib.Nifti1Image:
        return nifti_image(self.mask, self.affine)

    def mni_centre(self) -> npt.NDArray[np.float64]:
        """The mask's centre of mass in MNI mm."""
        idx = np.argwhere(self.mask > 0).mean(axis=0)
        world = self.subject_to_mni @ self.affine @ np.append(idx, 1.0)
        return np.asarray(world[:3], dtype=np.float64)


def _on_study_grid(
    volume: FloatArray,
    template: MniTemplate,
    study: tuple[Affine, tuple[int, ...]],
    subject_to_mni: Affine,
) -> FloatArray:
    """A template-grid ``volume`` on a study grid (``study``: affine, shape), resampled only
    where it can be non-zero (:func:`~tumorlens.pipeline.registration.support_box`); the
    same values as a warp of the whole grid (``bench/brain_mask.py`` times both)."""
    affine, shape = study
    out = np.zeros(shape, dtype=np.float32)
    to_study = np.linalg.inv(subject_to_mni @ affine) @ template.affine
    box = support_box(volume > 0, to_study, shape)
    if box is not None:
        out[box] = resample(
            volume,
            template.affine,
            box_affine(affine, box),
            tuple(b.stop - b.start for b in box),
            transform=subject_to_mni,
        )
    return out


def sellar_region_on_grid(
    template: MniTemplate, affine: Affine, shape: tuple[int, ...], subject_to_mni: Affine
) -> BoolArray:
    """The template's sellar region on a study grid."""
    region: BoolArray = (
        _on_study_grid(template.sellar_region, template, (affine, shape), subject_to_mni) >= 0.5
    )
    return region


@lru_cache(maxsize=2)
def load_mni_template(models_dir: Path) -> MniTemplate:
    """The shipped template brain mask (read once per process)."""
    path = models_dir / TEMPLATE_MASK_FILE
    try:
        image: Any = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        affine = np.asarray(image.affine, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read the MNI template {path}: {exc}"
            " (write it with python -m tumorlens_train.template_export)"
        ) from exc
    return MniTemplate(
        mask=(data > 0).astype(np.float32),
        affine=affine,
        sellar_region=sellar_region(data.shape, affine),
        dilated=ndimage.binary_dilation(data > 0).astype(np.float32),
    )


def _points(mask: BoolArray, affine: Affine) -> npt.NDArray[np.float64]:
    idx = np.argwhere(mask).T
    out: npt.NDArray[np.float64] = (affine @ np.vstack([idx, np.ones(idx.shape[1])]))[:3].T
    return out


def _dice(a: BoolArray, b: BoolArray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 0.0


def _initial(template: MniTemplate, head_mm: npt.NDArray[np.float64]) -> Affine:
    """MNI -> subject start: head centre in x and y, brain top below the head top, scale from
    the head's width. Scanner axes follow the patient closely enough that no rotation is
    guessed."""
    brain_mm = _points(template.mask > 0, template.affine)
    width = float(np.percentile(head_mm[:, 0], 99) - np.percentile(head_mm[:, 0], 1))
    scale = float(np.clip(width / _TEMPLATE_HEAD_WIDTH_MM, 0.85, 1.15))
    centre = brain_mm.mean(axis=0)
    target = head_mm.mean(axis=0)
    # The vertex anchors z: neck coverage varies, the top of the head does not.
    target[2] = float(np.percentile(head_mm[:, 2], 99.9)) - _SCALP_MM * scale
    target[2] -= (float(brain_mm[:, 2].max()) - centre[2]) * scale
    out = np.diag([scale, scale, scale, 1.0])
    out[:3, 3] = target - scale * centre
    return out


def provisional_mask(subject: FloatArray, affine: Affine, head: BoolArray) -> BoolArray:
    """Intensity heuristic (see module docstring, step 1), on the subject's own grid."""
    out = np.zeros(subject.shape, dtype=bool)
    # Worked out inside the head's bounding box and a margin of background: every step
    # (distance to the background, openings, components, hole filling) gives there what it
    # gives on the whole grid, at the cost of the head's voxels rather than the field of view's.
    box = support_box(head, np.eye(4), head.shape)
    if box is not None:
        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        out[box] = _provisional_in_box(subject[box], zooms, head[box])
    return out


def _provisional_in_box(
    subject: FloatArray, zooms: npt.NDArray[np.float64], head: BoolArray
) -> BoolArray:
    values = subject[head]
    lo, hi = np.percentile(values, [20, 99])
    hist, edges = np.histogram(values[(values > lo) & (values < hi)], bins=64)
    peak = int(np.argmax(ndimage.gaussian_filter1d(hist.astype(np.float64), 2)))
    tissue = head & (subject > _TISSUE_FRACTION * (edges[peak] + edges[peak + 1]) / 2)
    depth = ndimage.distance_transform_edt(head, sampling=zooms)
    # In-plane structuring elements: slices may be 5 mm apart, pixels under 1 mm.
    radius = max(1, round(3.0 / float(zooms[0])))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (xx**2 + yy**2 <= radius**2)[:, :, np.newaxis]
    # Skull and scalp are thin shells: opening removes them (and bridges through the skull)
    # while the brain, a thick blob, keeps its shape.
    tissue = ndimage.binary_opening(tissue, disk)
    core = largest_component(tissue & (depth > _CORE_DEPTH_MM))
    grown: BoolArray = ndimage.binary_dilation(
        core,
        structure=np.ones((3, 3, 1), dtype=bool),
        iterations=max(1, round(_REGROW_MM / float(zooms[:2].mean()))),
        mask=tissue,
    )
    return fill_holes(grown, per_slice=True)  # ventricles and dark CSF spaces are brain


def _fit(
    template: MniTemplate, provisional: BoolArray, affine: Affine, initial: Affine
) -> tuple[Affine, float]:
    """MNI -> subject affine fitting the template mask to the provisional mask."""
    moving, moving_affine = resample_isotropic(
        provisional.astype(np.float32), affine, REGISTRATION_SPACING_MM
    )
    soft, soft_affine = resample_isotropic(template.mask, template.affine, REGISTRATION_SPACING_MM)
    region = ndimage.binary_dilation(soft > 0.5, iterations=_RING_VOXELS)
    points = _points(region, soft_affine)
    vault = points[:, 2] > VAULT_MIN_Z_MM
    labels = (soft[region] > 0.25).astype(np.int64) + (soft[region] > 0.75).astype(np.int64)
    fit = register(
        points[vault],
        labels[vault],
        moving,
        moving_affine,
        initial=initial,
        stages=(6, 7),
        search_range=SEARCH_RANGE,
        max_points=6000,
    )
    LOG.debug(
        "template fit: CR %.2f (start %.2f), %d evaluations, %.1f s",
        fit.correlation_ratio,
        1 - fit.initial_cost,
        fit.evaluations,
        fit.seconds,
    )
    return fit.matrix, fit.correlation_ratio


def _sanity(mask: BoolArray, head: BoolArray, affine: Affine, agreement: float) -> list[str]:
    problems = []
    volume = float(mask.sum()) * voxel_volume_ml(affine)
    if not MIN_BRAIN_ML <= volume <= MAX_BRAIN_ML:
        problems.append(f"volume {volume:.0f} mL outside {MIN_BRAIN_ML:.0f}-{MAX_BRAIN_ML:.0f}")
    if not mask.any():
        return [*problems, "empty mask"]
    inside = float((mask & head).sum()) / float(mask.sum())
    if inside < 0.95:
        problems.append(f"only {inside:.0%} of the mask inside the head")
    if head.any():
        off = _points(mask, affine).mean(axis=0)[0] - _points(head, affine).mean(axis=0)[0]
        if abs(off) > MAX_OFF_CENTRE_MM:
            problems.append(f"mask centre {off:+.0f} mm off the head's mid-line")
    if agreement < MIN_AGREEMENT:
        problems.append(f"Dice {agreement:.2f} with the intensity-based mask")
    return problems


def extract_brain(study: AlignedStudy, models_dir: Path) -> BrainMask:
    """The brain mask on the study grid and the subject <-> MNI affines."""
    start = time.perf_counter()
    template = load_mni_template(models_dir)
    name = next((s for s in SUBJECT_ORDER if s in study.sequences), None)
    if name is None:
        raise ValueError("the aligned study holds no sequence")
    subject = study.array(name)
    zooms = np.asarray(study.zooms)
    # Light in-plane smoothing: thresholds on single noisy pixels make ragged masks.
    smooth = ndimage.gaussian_filter(subject, np.minimum(1.0 / zooms, 1.0))
    head = head_mask(smooth)
    provisional = provisional_mask(smooth, study.affine, head)
    initial = _initial(template, _points(head, study.affine))
    mni_to_subject, _ = _fit(template, provisional, study.affine, initial)
    subject_to_mni: Affine = np.asarray(np.linalg.inv(mni_to_subject), dtype=np.float64)
    grid = (study.affine, study.shape)
    mask = _on_study_grid(template.dilated, template, grid, subject_to_mni) >= 0.5
    agreement = _dice(mask, provisional)
    # The volume is judged without the dilation: it estimates the intracranial volume.
    undilated = _on_study_grid(template.mask, template, grid, subject_to_mni) >= 0.5
    problems = _sanity(undilated, head, study.affine, agreement)
    method = "template registration"
    warnings: list[str] = []
    if problems:
        warnings.append(
            "template registration rejected (" + "; ".join(problems) + "); brain mask from"
            " an intensity heuristic, and the MNI placement is approximate"
        )
        mask, method, mni_to_subject = provisional, "intensity heuristic", initial
        subject_to_mni = np.asarray(np.linalg.inv(initial), dtype=np.float64)
    mask = mask | sellar_region_on_grid(template, study.affine, study.shape, subject_to_mni)
    volume = float(mask.sum()) * voxel_volume_ml(study.affine)
    LOG.info("brain mask by %s on %s: %.0f mL, Dice %.2f", method, name, volume, agreement)
    return BrainMask(
        mask=mask.astype(np.uint8),
        affine=study.affine,
        method=method,
        volume_ml=volume,
        subject_to_mni=subject_to_mni,
        mni_to_subject=mni_to_subject,
        agreement=agreement,
        subject_sequence=name,
        seconds=time.perf_counter() - start,
        warnings=tuple(warnings),
    )
