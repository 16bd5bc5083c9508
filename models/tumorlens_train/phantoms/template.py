"""MNI ICBM152 2009a template (shipped with nilearn) resampled once onto the phantom grid.

The working grid is fixed in MNI millimetres so every phantom of a given spacing has the same
shape and affine: a 192 x 224 x 192 mm box centred on MNI (0, -18, 10), which holds the brain
(x -72..72, y -107..73, z -72..82) plus about 15 mm of skull and scalp. At the default 2 mm
spacing that is 96 x 112 x 96 voxels (divisible by 16 for U-Nets); 1.5 mm gives 128 x 149 x 128.

nilearn ships T1 and grey/white-matter probability maps but no CSF map or brain mask, so the
brain mask is T1 > 0 with holes filled and CSF = mask - GM - WM (clipped). Everything here is
computed once per spacing and cached per process (about a second).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

# Sella turcica in MNI 2009a, one place for the phantoms and the runtime's brain mask.
from tumorlens.pipeline.brain_mask import SELLA_MNI_MM

from .fields import FloatArray

DEFAULT_SPACING_MM = 2.0
GRID_EXTENT_MM = (192.0, 224.0, 192.0)
GRID_CENTRE_MM = (0.0, -18.0, 10.0)


_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_ENVELOPE_CLOSING_MM = 10.0  # fills the gaps between lobes so the skull hugs a head, not gyri
_SELLA_BALL_MM = 8.0  # keeps the sella intracranial: it holds the gland and adenomas grow there
#: Normal pituitary gland: an ellipsoid (semi-axes x, y, z in mm) filling the sella.
PITUITARY_GLAND_MM = (6.5, 5.0, 3.5)
_NECK_Z_MM = -66.0  # below this the template is cut; the head continues as a straight neck
_HEAD_MARGIN_MM = 14.0  # dura to skin at the vault (skull ~7 mm + scalp ~7 mm)
_HEAD_CLOSING_MM = 25.0  # the outer head is smooth: fills the skull base and temporal fossae


@dataclass(frozen=True)
class Grid:
    """An axis-aligned RAS voxel grid in MNI millimetres."""

    shape: tuple[int, int, int]
    spacing: float
    origin: tuple[float, float, float]  # world position (mm) of voxel (0, 0, 0)

    @classmethod
    def for_spacing(cls, spacing: float) -> Grid:
        if not 0.5 <= spacing <= 8.0:
            raise ValueError(f"spacing must be between 0.5 and 8 mm, got {spacing}")
        shape = tuple(max(8, round(e / spacing)) for e in GRID_EXTENT_MM)
        origin = tuple(
            c - (n - 1) * spacing / 2 for c, n in zip(GRID_CENTRE_MM, shape, strict=True)
        )
        return cls(
            (shape[0], shape[1], shape[2]), float(spacing), (origin[0], origin[1], origin[2])
        )

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """Voxel -> RAS mm."""
        aff = np.diag([self.spacing, self.spacing, self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def axis_mm(self, axis: int) -> FloatArray:
        """World coordinates (mm) of the voxel centres along one axis."""
        return (self.origin[axis] + self.spacing * np.arange(self.shape[axis])).astype(np.float32)

    def world(self) -> FloatArray:
        """World coordinates of every voxel, shape (3, X, Y, Z)."""
        axes = [self.axis_mm(a) for a in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)

    def to_index(self, mm: npt.ArrayLike) -> FloatArray:
        """World mm (3, ...) -> fractional voxel index (3, ...)."""
        arr = np.asarray(mm, dtype=np.float32)
        origin = np.asarray(self.origin, dtype=np.float32).reshape((3,) + (1,) * (arr.ndim - 1))
        return (arr - origin) / np.float32(self.spacing)


@dataclass(frozen=True)
class Sites:
    """Candidate tumour centres (world mm, shape (N, 3)) for each placement rule."""

    deep_wm: FloatArray  # high-grade glioma: deep white matter, supratentorial
    cerebral: FloatArray  # low-grade glioma: cerebral white or grey matter
    junction: FloatArray  # metastases: grey/white junction, anywhere in the brain
    surface: FloatArray  # meningioma: convexity brain surface points ...
    surface_normals: FloatArray  # ... and their outward unit normals


@dataclass(frozen=True)
class Template:
    """Template tissue maps on the working grid (contiguous float32 arrays, values in [0, 1])."""

    grid: Grid
    gm: FloatArray
    wm: FloatArray
    brain: FloatArray  # soft brain mask (brain + CSF inside the template mask)
    depth_mm: FloatArray  # distance to the brain surface inside the mask, 0 outside
    envelope_sd_mm: FloatArray  # signed distance to the intracranial envelope, negative inside
    head_sd_mm: FloatArray  # signed distance to the outer head surface, negative inside
    sites: Sites

    @cached_property
    def csf(self) -> FloatArray:
        return np.asarray(np.clip(self.brain - self.gm - self.wm, 0.0, 1.0), dtype=np.float32)


def template_dir() -> Path:
    """Folder of nilearn's packaged MNI ICBM152 2009a files.

    Located with ``find_spec`` because importing ``nilearn.datasets`` costs seconds (pandas,
    scikit-learn) and we only need three files from it.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "nilearn is required for phantoms: pip install 'tumorlens[train]'"
        )
    return Path(spec.origin).parent / "datasets" / "data"


def _resample(volume: FloatArray, grid: Grid, src_affine: npt.NDArray[np.float64]) -> FloatArray:
    """Anti-aliased linear resampling of an axis-aligned 1 mm volume onto ``grid``."""
    src_spacing = float(src_affine[0, 0])
    ratio = grid.spacing / src_spacing
    if ratio > 1:
        # Gaussian with FWHM of the output voxel, net of the input voxel already there.
        volume = ndi.gaussian_filter(volume, sigma=0.42 * np.sqrt(ratio**2 - 1), mode="constant")
    offset = (np.asarray(grid.origin) - src_affine[:3, 3]) / src_spacing
    out = ndi.affine_transform(
        volume,
        matrix=np.full(3, ratio),
        offset=offset,
        output_shape=grid.shape,
        order=1,
        mode="nearest",  # continue the cut brainstem into the neck below the template's FOV
        output=np.float32,
    )
    return np.asarray(out, dtype=np.float32)


def _supratentorial(xyz: FloatArray) -> npt.NDArray[np.bool_]:
    """Cerebrum in MNI space: above the tentorium, or the temporal lobes beside the brainstem."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return (z > -5) | ((y > -35) & (z > -40) & (np.abs(x) > 20))


def _coords(mask: npt.NDArray[np.bool_], grid: Grid) -> FloatArray:
    idx = np.argwhere(mask).astype(np.float32)
    return np.asarray(grid.origin, dtype=np.float32) + idx * np.float32(grid.spacing)


def _signed_distance(mask: npt.NDArray[np.bool_], spacing: float) -> FloatArray:
    outside = ndi.distance_transform_edt(~mask, sampling=spacing)
    inside = ndi.distance_transform_edt(mask, sampling=spacing)
    return np.asarray(outside - inside, dtype=np.float32)


def _closing(
    mask: npt.NDArray[np.bool_], radius_mm: float, spacing: float
) -> npt.NDArray[np.bool_]:
    """Morphological closing with a ball, via two distance transforms (fast for big radii).

    Padded first: otherwise the grid edge counts as inside and the closing grows arms to it.
    """
    pad = int(np.ceil(radius_mm / spacing)) + 1
    padded = np.pad(mask, pad)
    grown = ndi.distance_transform_edt(~padded, sampling=spacing) <= radius_mm
    closed = ndi.distance_transform_edt(grown, sampling=spacing) > radius_mm
    return np.asarray(closed[pad:-pad, pad:-pad, pad:-pad]) | mask


def _extrude_neck(mask: npt.NDArray[np.bool_], grid: Grid) -> None:
    """The template stops at the lower brainstem: continue the last full slice downwards."""
    neck = int(np.clip(round((_NECK_Z_MM - grid.origin[2]) / grid.spacing), 0, grid.shape[2] - 1))
    mask[:, :, :neck] = mask[:, :, neck : neck + 1]


def _head(envelope_sd: FloatArray, grid: Grid) -> FloatArray:
    """Signed distance (mm) to a smooth outer head surface around the intracranial envelope."""
    head = _closing(envelope_sd <= _HEAD_MARGIN_MM, _HEAD_CLOSING_MM, grid.spacing)
    _extrude_neck(head, grid)
    return _signed_distance(head, grid.spacing)


def _envelope(brain: npt.NDArray[np.bool_], grid: Grid) -> FloatArray:
    """Signed distance (mm) to a smooth intracranial envelope around the brain."""
    s = grid.spacing
    closed = _closing(brain, _ENVELOPE_CLOSING_MM, s)
    world = grid.world()
    sella = np.asarray(SELLA_MNI_MM, dtype=np.float32).reshape(3, 1, 1, 1)
    closed |= ((world - sella) ** 2).sum(axis=0) <= _SELLA_BALL_MM**2
    closed = ndi.binary_fill_holes(closed)
    _extrude_neck(closed, grid)
    return _signed_distance(closed, s)


def _sites(
    gm: FloatArray, wm: FloatArray, brain: FloatArray, depth: FloatArray, grid: Grid
) -> Sites:
    world = np.moveaxis(grid.world(), 0, -1)
    supra = _supratentorial(world)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    inside = brain > 0.5
    deep_wm = inside & supra & (wm > 0.7) & (depth >= 15.0) & (csf < 0.2)
    cerebral = inside & supra & ((wm > 0.5) | (gm > 0.5)) & (depth >= 10.0) & (csf < 0.2)
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    # Basal ganglia and thalami also have mixed GM/WM probabilities; exclude them so that
    # "junction" means the cortical grey/white boundary.
    deep_nuclei = (np.abs(x) < 32) & (y > -40) & (y < 28) & (z > -15) & (z < 22)
    junction = (
        inside
        & (np.abs(gm - 0.5) < 0.2)
        & (np.abs(wm - 0.45) < 0.2)
        & (depth >= 5.0)
        & (depth <= 22.0)
        & ~deep_nuclei
        & (z > -50)  # not in the medulla/neck
    )
    # Meningioma: convexity surface (not the skull base, which the envelope smooths over).
    smooth = ndi.gaussian_filter(inside.astype(np.float32), sigma=4.0 / grid.spacing)
    grad = np.stack(np.gradient(smooth), axis=-1)
    norm = np.linalg.norm(grad, axis=-1, keepdims=True)
    normals = -grad / np.maximum(norm, 1e-6)
    shell = inside & ~ndi.binary_erosion(inside)
    surface = shell & (z > 0) & (normals[..., 2] > -0.2) & (np.abs(x) > 8)
    return Sites(
        deep_wm=_coords(deep_wm, grid),
        cerebral=_coords(cerebral, grid),
        junction=_coords(junction, grid),
        surface=_coords(surface, grid),
        surface_normals=normals[surface].astype(np.float32),
    )


def _load_1mm(name: str) -> tuple[FloatArray, npt.NDArray[np.float64]]:
    img = nib.load(template_dir() / _TEMPLATE_FILES[name])
    if not isinstance(img, nib.Nifti1Image):
        raise TypeError(f"{_TEMPLATE_FILES[name]} is not a NIfTI image")
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data, np.asarray(img.affine, dtype=np.float64)


@lru_cache(maxsize=4)
def _load_template(spacing: float) -> Template:
    grid = Grid.for_spacing(spacing)
    t1, affine = _load_1mm("t1")
    mask_1mm = ndi.binary_fill_holes(t1 > 0).astype(np.float32)
    gm_raw = _resample(_load_1mm("gm")[0] / 255.0, grid, affine)
    wm_raw = _resample(_load_1mm("wm")[0] / 255.0, grid, affine)
    brain_raw = _resample(mask_1mm, grid, affine)
    filled = ndi.binary_fill_holes(brain_raw > 0.5)
    brain = np.where(filled, np.maximum(brain_raw, 0.5), brain_raw).astype(np.float32)
    # Probability maps can sum above the mask at edges; keep gm + wm <= brain.
    over = np.maximum((gm_raw + wm_raw) / np.maximum(brain, 1e-6), 1.0)
    gm = np.asarray(gm_raw / over, dtype=np.float32)
    wm = np.asarray(wm_raw / over, dtype=np.float32)
    inside = brain > 0.5
    depth = np.asarray(ndi.distance_transform_edt(inside, sampling=grid.spacing), np.float32)
    envelope = _envelope(inside, grid)
    tpl = Template(
        grid=grid,
        gm=np.ascontiguousarray(gm, np.float32),
        wm=np.ascontiguousarray(wm, np.float32),
        brain=np.ascontiguousarray(np.clip(brain, 0, 1), np.float32),
        depth_mm=depth,
        envelope_sd_mm=envelope,
        head_sd_mm=_head(envelope, grid),
        sites=_sites(gm, wm, brain, depth, grid),
    )
    for arr in (tpl.gm, tpl.wm, tpl.brain, tpl.depth_mm, tpl.envelope_sd_mm, tpl.head_sd_mm):
        arr.setflags(write=False)  # shared by every case in this process
    return tpl


def load_template(spacing: float = DEFAULT_SPACING_MM) -> Template:
    """The template on the working grid for ``spacing`` mm (cached per process)."""
    return _load_template(round(float(spacing), 3))
