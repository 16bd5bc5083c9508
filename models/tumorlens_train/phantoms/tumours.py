"""Tumour placement and label rendering, one set of rules per tumour type.

Placement (:func:`plan_tumour`) picks atlas-space centres from the template's candidate sites;
rendering (:func:`render_tumour`) draws compartments on the output grid using every voxel's atlas
coordinate before mass effect, and the pushed tissue maps for oedema, which follows white matter.

Shapes are star-shaped around their centre (radius is a smooth function of direction), so an
enhancing rim drawn as a radial shell encloses the necrotic core; where clipping at the brain
surface removes rim, the core is eroded back so necrosis never touches non-tumour voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from .anatomy import MassEffect, Tissue
from .fields import FloatArray, crop_slices, smooth_noise
from .labels import Label, TumourType
from .template import SELLA_MNI_MM, Grid, Template

BoolArray = npt.NDArray[np.bool_]
Crop = tuple[slice, slice, slice]


class Compartment(IntEnum):
    """Tissue classes inside a tumour; each has its own intensities and maps to one label."""

    NONE = 0
    NECROSIS = 1  # fluid/necrotic centre of HGG and metastases
    NON_ENHANCING = 2  # solid low-grade glioma
    CYST = 3  # cystic part of a pituitary macroadenoma
    ENHANCING = 4  # intra-axial enhancing tumour: glioma rim, metastasis
    EXTRA_AXIAL = 5  # homogeneously enhancing meningioma
    OEDEMA = 6
    ADENOMA = 7  # pituitary adenoma: enhances, but less than the normal gland beside it


#: Compartment -> internal label (index with a compartment array).
COMPARTMENT_LABEL = np.array(
    [
        Label.BACKGROUND,
        Label.CORE,
        Label.CORE,
        Label.CORE,
        Label.ENHANCING,
        Label.ENHANCING,
        Label.OEDEMA,
        Label.ENHANCING,
    ],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class Lesion:
    """One tumour focus in atlas (MNI mm) space."""

    centre_mm: tuple[float, float, float]
    radius_mm: float
    push_mm: float  # radius of the volume inserted by mass effect; 0 for none
    normal: tuple[float, float, float] | None = None  # outward surface normal (meningioma)


@dataclass(frozen=True)
class TumourPlan:
    tumour_type: TumourType
    lesions: tuple[Lesion, ...] = ()

    def mass_effects(self) -> list[MassEffect]:
        return [MassEffect(les.centre_mm, les.push_mm) for les in self.lesions if les.push_mm > 0]


@dataclass
class RenderedTumour:
    compartments: npt.NDArray[np.uint8]
    lesions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def labels(self) -> npt.NDArray[np.uint8]:
        return COMPARTMENT_LABEL[self.compartments]


# --- placement ---------------------------------------------------------------------------------
def _depth_at(template: Template, point: FloatArray) -> float:
    idx = np.round(template.grid.to_index(point)).astype(int)
    idx = np.clip(idx, 0, np.asarray(template.grid.shape) - 1)
    return float(template.depth_mm[idx[0], idx[1], idx[2]])


def _pick_deep(
    template: Template,
    rng: np.random.Generator,
    candidates: FloatArray,
    radius: float,
    margin: float,
) -> tuple[FloatArray, float]:
    """A candidate site deep enough that a tumour of ``radius`` stays mostly inside the brain.

    Shrinks the radius every 40 misses and settles for the last site after 200, so placement
    never fails.
    """
    point = candidates[rng.integers(len(candidates))]
    for attempt in range(1, 200):
        if _depth_at(template, point) >= margin + 0.6 * radius:
            break
        if attempt % 40 == 0:
            radius *= 0.85
        point = candidates[rng.integers(len(candidates))]
    return point, radius


def _min_radius(grid: Grid) -> float:
    """Smallest lesion radius that still renders as a few voxels with a rim at this spacing."""
    return 1.6 * grid.spacing


def plan_tumour(
    tumour_type: TumourType, template: Template, rng: np.random.Generator
) -> TumourPlan:
    """Choose lesion centres and sizes for one case."""
    sites = template.sites
    rmin = _min_radius(template.grid)
    if tumour_type is TumourType.HEALTHY:
        return TumourPlan(tumour_type)
    if tumour_type is TumourType.HGG:
        point, radius = _pick_deep(template, rng, sites.deep_wm, rng.uniform(14.0, 26.0), 6.0)
        lesion = Lesion(_tuple(point), radius, radius * rng.uniform(0.55, 0.8))
        return TumourPlan(tumour_type, (lesion,))
    if tumour_type is TumourType.LGG:
        point, radius = _pick_deep(template, rng, sites.cerebral, rng.uniform(12.0, 28.0), 4.0)
        lesion = Lesion(_tuple(point), radius, radius * rng.uniform(0.3, 0.6))
        return TumourPlan(tumour_type, (lesion,))
    if tumour_type is TumourType.METASTASIS:
        return TumourPlan(tumour_type, _plan_metastases(sites.junction, rng, rmin))
    if tumour_type is TumourType.MENINGIOMA:
        i = int(rng.integers(len(sites.surface)))
        normal = sites.surface_normals[i]
        radius = float(rng.uniform(12.0, 28.0))
        # Centred on the brain surface: the half outside is clipped at the dura, the half inside
        # is made room for by pushing the brain inward.
        centre = sites.surface[i] + normal * radius * rng.uniform(-0.15, 0.1)
        lesion = Lesion(_tuple(centre), radius, 0.78 * radius, _tuple(normal))
        return TumourPlan(tumour_type, (lesion,))
    if tumour_type is TumourType.PITUITARY:
        macro = rng.random() < 0.65
        radius = float(rng.uniform(9.0, 17.0) if macro else rng.uniform(max(rmin, 4.0), 8.0))
        jitter = rng.normal(0.0, [1.0, 1.5, 1.5]).clip(-3.0, 3.0)
        centre = np.asarray(SELLA_MNI_MM) + jitter
        if macro:
            centre[2] += 0.45 * radius  # suprasellar extension grows upward out of the sella
        push = 0.7 * radius if macro else 0.0
        return TumourPlan(tumour_type, (Lesion(_tuple(centre), radius, push),))
    raise ValueError(f"unknown tumour type {tumour_type!r}")


def _plan_metastases(
    candidates: FloatArray, rng: np.random.Generator, rmin: float
) -> tuple[Lesion, ...]:
    count = int(rng.choice([1, 2, 3, 4], p=[0.45, 0.25, 0.18, 0.12]))
    lesions: list[Lesion] = []
    for _ in range(400):
        if len(lesions) == count:
            break
        radius = float(max(rmin, rng.uniform(3.5, 12.0)))
        point = candidates[rng.integers(len(candidates))]
        # Far enough apart that cores stay separate connected components.
        if all(
            np.linalg.norm(point - np.asarray(o.centre_mm)) > radius + o.radius_mm + 12.0
            for o in lesions
        ):
            lesions.append(Lesion(_tuple(point), radius, 0.8 * radius))
    return tuple(lesions)


def _tuple(v: npt.ArrayLike) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=float)
    return (float(a[0]), float(a[1]), float(a[2]))


# --- shapes -----------------------------------------------------------------------------------
def _direction_noise(rng: np.random.Generator, unit: FloatArray, n_ctrl: int = 4) -> FloatArray:
    """A smooth random function of direction (unit vectors (3, ...)), unit std."""
    cube = smooth_noise(rng, (9, 9, 9), n_ctrl)
    out = ndi.map_coordinates(cube, (unit + 1.0) * 4.0, order=1, output=np.float32)
    return np.asarray(out, dtype=np.float32)


def _random_rotation(rng: np.random.Generator) -> FloatArray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _radius_field(
    rng: np.random.Generator,
    unit: FloatArray,
    radius: float,
    *,
    roughness: float,
    elongation: float,
    axes: tuple[float, float, float] | None = None,
) -> FloatArray:
    """Surface radius along each direction: a rotated ellipsoid with smooth lobulation."""
    if axes is None:
        ax = np.exp(rng.normal(0.0, elongation, size=3))
        ax /= np.cbrt(ax.prod())
        rot = _random_rotation(rng)
    else:
        ax = np.asarray(axes, dtype=float)
        rot = np.eye(3, dtype=np.float32)
    v = np.einsum("ij,j...->i...", rot, unit)
    ellipse = 1.0 / np.sqrt(sum(v[i] ** 2 / ax[i] ** 2 for i in range(3)))
    lobes = 1.0 + roughness * _direction_noise(rng, unit)
    return np.asarray(radius * ellipse * np.clip(lobes, 0.5, 1.6), dtype=np.float32)


def _main_part(mask: BoolArray) -> BoolArray:
    """The largest face-connected component: clipping can leave specks that look like lesions."""
    parts, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return np.asarray(parts == int(np.argmax(sizes)), dtype=bool)


def _enclosed(tumour: BoolArray, core: BoolArray) -> BoolArray:
    """Core voxels whose six face neighbours are all tumour.

    Where clipping at the brain surface cut the rim away, this keeps necrosis from touching
    non-tumour tissue, so the enhancing rim always encloses it.
    """
    interior = ndi.binary_erosion(tumour, ndi.generate_binary_structure(3, 1), border_value=0)
    return np.asarray(core & interior, dtype=bool)


def _oedema(
    tumour: BoolArray,
    tissue: dict[str, FloatArray],
    reach_mm: float,
    spacing: float,
    rng: np.random.Generator,
    *,
    follow_wm: bool = True,
    halo_mm: float = 0.0,
) -> BoolArray:
    """Oedema spreading from ``tumour`` up to ``reach_mm``, along white matter if asked.

    Vasogenic oedema tracks along white-matter fibres and spares the cortex, so it grows by
    geodesic dilation through WM; a Euclidean cap with a noisy radius keeps it blob-like.
    """
    if reach_mm <= 0 or not tumour.any():
        return np.zeros_like(tumour)
    shape = tumour.shape
    ctrl = tuple(max(2, round(n * spacing / 12.0)) for n in shape)
    noise = smooth_noise(rng, shape, ctrl)
    in_brain = (tissue["brain"] > 0.5) & (tissue["csf"] < 0.45)
    allowed = in_brain & (tissue["wm"] > 0.4 + 0.15 * noise) if follow_wm else in_brain
    steps = int(np.ceil(reach_mm / spacing))
    struct = ndi.generate_binary_structure(3, 2)
    grown = ndi.binary_dilation(tumour, struct, iterations=steps, mask=allowed | tumour)
    dist = ndi.distance_transform_edt(~tumour, sampling=spacing)
    cap = dist <= reach_mm * (1.0 + 0.25 * smooth_noise(rng, shape, ctrl))
    halo = (dist <= halo_mm) & in_brain
    return np.asarray(((grown & cap) | halo) & ~tumour, dtype=bool)


# --- rendering --------------------------------------------------------------------------------
@dataclass
class _Local:
    """A lesion's neighbourhood: crop of the output grid and coordinates relative to its centre."""

    crop: Crop
    r: FloatArray  # distance from the centre in atlas mm
    unit: FloatArray  # direction from the centre
    tissue: dict[str, FloatArray]
    intracranial: BoolArray
    centre_voxel: tuple[int, int, int]


def _local(
    atlas: FloatArray,
    tissue: Tissue,
    intracranial: BoolArray,
    lesion: Lesion,
    *,
    extent_mm: float,
    grid: Grid,
) -> _Local | None:
    centre = np.asarray(lesion.centre_mm, dtype=np.float32).reshape(3, 1, 1, 1)
    r2 = ((atlas - centre) ** 2).sum(axis=0)
    crop = crop_slices(r2 <= extent_mm**2, 2, grid.shape)
    if crop is None:
        return None
    rel = atlas[(slice(None), *crop)] - centre
    r = np.sqrt((rel**2).sum(axis=0))
    unit = rel / np.maximum(r, 1e-3)
    full = np.unravel_index(int(np.argmin(r2)), r2.shape)
    local_tissue = {k: v[crop] for k, v in tissue.as_dict().items()}
    return _Local(
        crop, r, unit, local_tissue, intracranial[crop], (int(full[0]), int(full[1]), int(full[2]))
    )


def render_tumour(
    plan: TumourPlan,
    atlas: FloatArray,
    tissue: Tissue,
    intracranial: BoolArray,
    *,
    grid: Grid,
    rng: np.random.Generator,
) -> RenderedTumour:
    """Draw the planned lesions as compartments on the output grid.

    ``atlas`` holds each voxel's atlas coordinate before mass effect, ``tissue`` the healthy maps
    after it, and ``intracranial`` the space inside the dura.
    """
    comp = np.zeros(grid.shape, dtype=np.uint8)
    out = RenderedTumour(comp)
    for lesion in plan.lesions:
        spec = _RENDERERS[plan.tumour_type]
        extent = spec.extent(lesion)
        local = _local(atlas, tissue, intracranial, lesion, extent_mm=extent, grid=grid)
        if local is None:
            continue
        tumour, oedema = spec.draw(local, lesion, grid.spacing, rng)
        region = comp[local.crop]
        free = region == Compartment.NONE
        region[(oedema & free)] = Compartment.OEDEMA
        solid = tumour != Compartment.NONE
        region[solid] = tumour[solid]  # tumour wins over another lesion's oedema
        idx = local.centre_voxel
        out.lesions.append(
            {
                "atlas_centre_mm": [round(c, 2) for c in lesion.centre_mm],
                "centre_voxel": list(idx),
                "centre_mm": [round(grid.origin[a] + grid.spacing * idx[a], 2) for a in range(3)],
                "radius_mm": round(lesion.radius_mm, 2),
                "mass_effect_mm": round(lesion.push_mm, 2),
            }
        )
    return out


class _Renderer:
    """Per-type drawing rule: returns (compartments, oedema mask) on the lesion's crop."""

    def extent(self, lesion: Lesion) -> float:
        return 1.7 * lesion.radius_mm + 4.0

    def draw(
        self, local: _Local, lesion: Lesion, spacing: float, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.uint8], BoolArray]:
        raise NotImplementedError


class _HighGradeGlioma(_Renderer):
    """Necrotic core inside an irregular enhancing rim, wide oedema along white matter."""

    def extent(self, lesion: Lesion) -> float:
        return 1.7 * lesion.radius_mm + 30.0

    def draw(
        self, local: _Local, lesion: Lesion, spacing: float, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.uint8], BoolArray]:
        outer = _radius_field(rng, local.unit, lesion.radius_mm, roughness=0.22, elongation=0.2)
        t_min = 1.6 * spacing
        rim = rng.uniform(2.5, 6.5) * (1.0 + 0.5 * _direction_noise(rng, local.unit, 5))
        rim = np.clip(rim, t_min, np.maximum(0.55 * outer, t_min))
        inside = _main_part((local.r < outer) & (local.tissue["brain"] > 0.3) & local.intracranial)
        comp = np.zeros(local.r.shape, dtype=np.uint8)
        comp[inside] = Compartment.ENHANCING
        comp[_enclosed(inside, local.r < outer - rim)] = Compartment.NECROSIS
        oedema = _oedema(
            inside, local.tissue, rng.uniform(8.0, 26.0), spacing, rng, halo_mm=spacing
        )
        return comp, oedema


class _LowGradeGlioma(_Renderer):
    """Homogeneous non-enhancing mass, rarely a tiny enhancing focus, little oedema."""

    def draw(
        self, local: _Local, lesion: Lesion, spacing: float, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.uint8], BoolArray]:
        outer = _radius_field(rng, local.unit, lesion.radius_mm, roughness=0.15, elongation=0.25)
        inside = _main_part((local.r < outer) & (local.tissue["brain"] > 0.3) & local.intracranial)
        comp = np.zeros(local.r.shape, dtype=np.uint8)
        comp[inside] = Compartment.NON_ENHANCING
        if rng.random() < 0.25:
            # A small enhancing focus (< ~2 % of the volume) deep inside the tumour.
            focus_r = lesion.radius_mm * rng.uniform(0.12, 0.25)
            offset = rng.normal(size=3)
            offset *= rng.uniform(0.0, 0.4) * lesion.radius_mm / np.linalg.norm(offset)
            rel = local.unit * local.r[None]
            d = np.sqrt(sum((rel[i] - offset[i]) ** 2 for i in range(3)))
            comp[inside & (d < focus_r)] = Compartment.ENHANCING
        reach = rng.uniform(1.0, 4.0) if rng.random() < 0.5 else 0.0
        return comp, _oedema(inside, local.tissue, reach, spacing, rng)


class _Metastasis(_Renderer):
    """Round enhancing lesion (solid or ring with necrosis) with oedema large for its size."""

    def extent(self, lesion: Lesion) -> float:
        return 3.8 * lesion.radius_mm + 10.0

    def draw(
        self, local: _Local, lesion: Lesion, spacing: float, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.uint8], BoolArray]:
        outer = _radius_field(rng, local.unit, lesion.radius_mm, roughness=0.06, elongation=0.08)
        inside = _main_part((local.r < outer) & (local.tissue["brain"] > 0.2) & local.intracranial)
        comp = np.zeros(local.r.shape, dtype=np.uint8)
        comp[inside] = Compartment.ENHANCING
        rim = max(rng.uniform(1.5, 3.5), 1.6 * spacing)
        if lesion.radius_mm - rim > 0.8 * spacing and rng.random() < 0.6:
            comp[_enclosed(inside, local.r < outer - rim)] = Compartment.NECROSIS
        reach = lesion.radius_mm * rng.uniform(1.3, 2.6) + 4.0
        return comp, _oedema(inside, local.tissue, reach, spacing, rng, halo_mm=spacing)


class _Meningioma(_Renderer):
    """Dural-based solid enhancing mass, flattened against the skull, optional dural tail."""

    def extent(self, lesion: Lesion) -> float:
        return 1.8 * lesion.radius_mm + 8.0

    def draw(
        self, local: _Local, lesion: Lesion, spacing: float, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.uint8], BoolArray]:
        outer = _radius_field(rng, local.unit, lesion.radius_mm, roughness=0.07, elongation=0.12)
        inside = _main_part((local.r < outer) & local.intracranial)
        comp = np.zeros(local.r.shape, dtype=np.uint8)
        comp[inside] = Compartment.EXTRA_AXIAL
        if rng.random() < 0.5:
            # Dural tail: thin enhancement along the dura just beyond the tumour margin.
            dura = local.intracranial & ~ndi.binary_erosion(local.intracranial, iterations=1)
            reach = lesion.radius_mm * rng.uniform(1.2, 1.6)
            tail = dura & (local.r < reach) & (local.tissue["brain"] < 0.5) & ~inside
            # Only dura face-connected to the tumour: specks, even touching at a corner, would
            # read as extra lesions.
            parts, _ = ndi.label(tail | inside)
            attached = np.unique(parts[inside])
            comp[tail & np.isin(parts, attached[attached > 0])] = Compartment.EXTRA_AXIAL
        reach = rng.uniform(1.5, 5.0) if rng.random() < 0.35 else 0.0
        solid = comp != Compartment.NONE
        oedema = _oedema(solid, local.tissue, reach, spacing, rng, follow_wm=False)
        return comp, oedema


class _PituitaryAdenoma(_Renderer):
    """Midline sellar mass, mostly solid enhancing, sometimes a cystic part, never oedema."""

    def draw(
        self, local: _Local, lesion: Lesion, spacing: float, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.uint8], BoolArray]:
        # Taller than wide once it grows out of the sella ("snowman" macroadenoma).
        tall = 1.25 if lesion.push_mm > 0 else 1.0
        axes = (0.95 / np.sqrt(tall), 1.05 / np.sqrt(tall), tall)
        outer = _radius_field(
            rng, local.unit, lesion.radius_mm, roughness=0.05, elongation=0.0, axes=axes
        )
        inside = _main_part(local.r < outer)
        comp = np.zeros(local.r.shape, dtype=np.uint8)
        comp[inside] = Compartment.ADENOMA
        if lesion.push_mm > 0 and rng.random() < 0.3:
            cyst = inside & (local.r < outer * rng.uniform(0.25, 0.45))
            comp[cyst] = Compartment.CYST
        return comp, np.zeros_like(inside)


_RENDERERS: dict[TumourType, _Renderer] = {
    TumourType.HGG: _HighGradeGlioma(),
    TumourType.LGG: _LowGradeGlioma(),
    TumourType.METASTASIS: _Metastasis(),
    TumourType.MENINGIOMA: _Meningioma(),
    TumourType.PITUITARY: _PituitaryAdenoma(),
}
