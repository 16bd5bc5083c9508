"""Small linear registration: rigid (6), similarity (7), 9 or 12 DOF; numpy/scipy only.

The cost is the correlation ratio (Roche et al. 1998; FSL FLIRT's default between contrasts):
the fixed image's intensities are binned once, the moving image is sampled at the transformed
fixed points, and the cost is the moving variance left within the fixed bins over its total
variance (0 = perfect functional dependence, 1 = none). It is smooth in the moving values and
needs no joint histogram, so one evaluation on ~10 000 points takes about a millisecond. It
suits contrasts whose intensity classes predict each other's (T1/T1c/FLAIR; not T2 against
T1c, where dark T1c is CSF and bone and bright T2 is CSF and fat). Powell's method
(derivative-free) minimises it in stages of more and more parameters, on images at 4 mm. Its
line searches start with small steps (2 mm, 2 degrees, 2 %) and the search range is a
penalty, not bounds: with bounds, scipy's Powell searches each line over the whole range and
jumps to far local minima of noisy costs.

Where one image's classes do not predict the other's (T2 against T1c), the cost can instead be
normalised mutual information (Studholme et al. 1999): the same fixed bins against the moving
values binned with linear (partial-volume) weights, so the cost stays smooth for Powell; it asks
only that the joint histogram be peaked, not that the mapping be a function.

Transforms are 4x4 matrices in RAS millimetres, mapping fixed-space points to moving-space
points (the direction needed to resample the moving image onto the fixed grid).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage, optimize

FloatArray = npt.NDArray[np.float32]
Affine = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Default search range around the initial transform: translation (mm), rotation (degrees),
#: scale and shear (percent).
DEFAULT_RANGE: Final = (40.0, 25.0, 30.0, 15.0)
#: First line-search steps, in the same units.
_STEPS: Final = (2.0, 2.0, 2.0, 1.0)


#: Similarity measures :func:`register` offers.
CORRELATION_RATIO: Final = "correlation ratio"
MUTUAL_INFORMATION: Final = "mutual information"
#: Moving-image bins for mutual information (the fixed side brings its own labels).
_MI_BINS: Final = 24


@dataclass(frozen=True)
class Registration:
    """A fitted transform (fixed mm -> moving mm) and how well it fits."""

    matrix: Affine
    cost: float  # 1 - similarity at the solution (lower is better)
    initial_cost: float
    evaluations: int
    seconds: float
    measure: str = CORRELATION_RATIO
    #: Similarity at each start, in order: ``initial``, then the ``alternatives``.
    start_similarities: tuple[float, ...] = ()

    @property
    def similarity(self) -> float:
        """Correlation ratio, or normalised mutual information minus 1; both 0 (none) to 1."""
        return 1.0 - self.cost

    @property
    def correlation_ratio(self) -> float:
        if self.measure != CORRELATION_RATIO:
            raise ValueError(f"this fit was by {self.measure}, not the correlation ratio")
        return self.similarity


def _rotation(degrees: npt.NDArray[np.float64]) -> Affine:
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    out: Affine = rz @ ry @ rx
    return out


def params_to_matrix(params: npt.ArrayLike, centre: npt.ArrayLike) -> Affine:
    """12 parameters -> 4x4: rotation, scale and shear about ``centre``, then translation."""
    p = np.zeros(12)
    given = np.asarray(params, dtype=np.float64)
    p[: given.size] = given
    c = np.asarray(centre, dtype=np.float64)
    shear = np.eye(3)
    shear[0, 1], shear[0, 2], shear[1, 2] = p[9:12] / 100.0
    linear = _rotation(p[3:6]) @ np.diag(np.exp(p[6:9] / 100.0)) @ shear
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = c + p[:3] - linear @ c
    return out


def otsu_threshold(values: npt.NDArray[Any], bins: int = 128) -> float:
    """Otsu's threshold of ``values`` (histogram between the 0.5th and 99.5th percentiles)."""
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        return float(lo)
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    between = (m0[-1] * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(centres[int(np.argmax(between))])


def largest_component(mask: BoolArray) -> BoolArray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out: BoolArray = labels == int(np.argmax(sizes))
    return out


def support_box(
    nonzero: BoolArray, source_to_target: Affine, target_shape: tuple[int, ...]
) -> tuple[slice, ...] | None:
    """The box of target voxels (a slice per axis) that can take a non-zero value when the
    source, non-zero at ``nonzero``, is resampled trilinearly onto the target grid
    (``source_to_target``: source voxel -> target voxel): the source voxels' bounding box one
    voxel wider (the interpolation's support), mapped, with a voxel of margin below and two
    above; None when that is empty. With the identity it is ``nonzero``'s bounding box with
    2 voxels of margin below and 3 above (slice ends are exclusive)."""
    idx = np.argwhere(nonzero)
    if idx.size == 0:
        return None
    lo, hi = idx.min(axis=0) - 1.0, idx.max(axis=0) + 1.0
    corners = np.array(
        [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    target = (source_to_target @ corners.T).T[:, :3]
    size = np.asarray(target_shape)
    start = np.clip(np.floor(target.min(axis=0)).astype(int) - 1, 0, size)
    stop = np.clip(np.ceil(target.max(axis=0)).astype(int) + 2, 0, size)
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def grow_box(
    box: tuple[slice, ...], margin: npt.ArrayLike, shape: tuple[int, ...]
) -> tuple[slice, ...]:
    """``box`` widened by ``margin`` voxels (per axis, or one number) each side, within
    ``shape``."""
    widths = np.broadcast_to(np.asarray(margin, dtype=int), (len(box),))
    return tuple(
        slice(max(0, b.start - int(m)), min(int(n), b.stop + int(m)))
        for b, m, n in zip(box, widths, shape, strict=True)
    )


def box_affine(affine: Affine, box: tuple[slice, ...]) -> Affine:
    """The affine of the sub-grid ``box`` of a grid with ``affine``."""
    out = affine.copy()
    start = np.array([b.start for b in box], dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return out


def fill_holes(mask: BoolArray, *, per_slice: bool = False) -> BoolArray:
    """``mask`` with its holes filled: the background components (face-connected; with
    ``per_slice`` only within each slice of the last axis) that touch no edge of the array
    (with ``per_slice``, no in-plane edge). What ``ndimage.binary_fill_holes`` gives, slice by
    slice or in 3D, in one labelling pass instead of its flood fill per slice (3.5x faster on
    240 x 240 x 155 in ``bench/brain_mask.py``)."""
    structure = ndimage.generate_binary_structure(3, 1)
    if per_slice:
        structure[:, :, 0] = structure[:, :, 2] = False
    labels, count = ndimage.label(~mask, structure=structure)
    if count == 0:
        return mask.copy()
    edges = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    if not per_slice:
        edges += [labels[:, :, 0], labels[:, :, -1]]
    outside = np.zeros(count + 1, dtype=bool)
    for edge in edges:
        outside[np.unique(edge)] = True
    outside[0] = False  # label 0: the mask itself
    filled: BoolArray = ~outside[labels]
    return filled


def head_mask(volume: FloatArray) -> BoolArray:
    """Head foreground: above Otsu's threshold, largest component, holes filled per slab."""
    positive = volume[volume > 0]
    if positive.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    mask = volume > otsu_threshold(positive) * 0.5  # half Otsu keeps dark skull and CSF
    mask = largest_component(ndimage.binary_opening(mask, iterations=1))
    # Holes open to the edge of a cut field of view are not filled in 3D; fill slice by slice.
    return fill_holes(fill_holes(mask), per_slice=True)


def resample_isotropic(
    volume: npt.NDArray[Any], affine: Affine, spacing: float
) -> tuple[FloatArray, Affine]:
    """A RAS-aligned ``spacing`` mm grid over the volume's extent, anti-aliased, trilinear."""
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    sigma = 0.42 * np.sqrt(np.maximum((spacing / zooms) ** 2 - 1.0, 0.0))
    smooth = ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), sigma, mode="nearest")
    shape = np.asarray(volume.shape)
    corners = np.array(
        [
            [x, y, z, 1.0]
            for x in (0, shape[0] - 1)
            for y in (0, shape[1] - 1)
            for z in (0, shape[2] - 1)
        ]
    )
    world = (affine @ corners.T).T[:, :3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    out_shape = tuple(int(n) for n in np.ceil((hi - lo) / spacing).astype(int) + 1)
    target = np.diag([spacing, spacing, spacing, 1.0])
    target[:3, 3] = lo
    return resample(smooth, affine, target, out_shape), target


def resample(
    volume: npt.NDArray[Any],
    source_affine: Affine,
    target_affine: Affine,
    target_shape: tuple[int, ...],
    *,
    transform: Affine | None = None,
    order: int = 1,
) -> FloatArray:
    """``volume`` on a target grid by physical coordinates (0 outside); ``transform`` maps
    target mm to source mm when the two are not in one space."""
    world = target_affine if transform is None else transform @ target_affine
    mapping = np.linalg.inv(source_affine) @ world  # target voxel -> source voxel
    shift = np.rint(mapping[:3, 3])
    if np.allclose(mapping[:3, :3], np.eye(3), atol=1e-6) and np.allclose(
        mapping[:3, 3], shift, atol=1e-6
    ):
        # The same grid up to a whole-voxel shift (series of one acquisition geometry, BraTS
        # files, a box of the grid): interpolating at the voxel centres would return the
        # values themselves, after ~0.8 s per 240^2 x 155 (bench/brain_mask.py).
        return _shifted_copy(np.asarray(volume), shift.astype(int), tuple(target_shape))
    out = ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=target_shape,
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
        output=np.float32,
    )
    return np.asarray(out, dtype=np.float32)


def _shifted_copy(
    volume: npt.NDArray[Any], shift: npt.NDArray[np.int_], shape: tuple[int, ...]
) -> FloatArray:
    """``out[i] = volume[i + shift]`` where that lies in ``volume``, else 0 (float32, a copy)."""
    out = np.zeros(shape, dtype=np.float32)
    dst, src = [], []
    for n_out, n_in, d in zip(shape, volume.shape, shift, strict=True):
        lo, hi = max(0, -int(d)), min(int(n_out), int(n_in) - int(d))
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo + int(d), hi + int(d)))
    out[tuple(dst)] = volume[tuple(src)]
    return out


class _CorrelationRatio:
    def __init__(
        self,
        points: npt.NDArray[np.float64],
        labels: npt.NDArray[np.int64],
        moving: FloatArray,
        moving_affine: Affine,
    ) -> None:
        self.points = np.hstack([points, np.ones((len(points), 1))]).T  # (4, N)
        self.labels = labels
        self.n_bins = int(labels.max()) + 1
        self.counts = np.bincount(labels, minlength=self.n_bins).astype(np.float64)
        self.moving = moving
        self.to_voxel = np.linalg.inv(moving_affine)
        self.evaluations = 0
        self._prepare()

    def _prepare(self) -> None:
        """What a subclass precomputes from the fixed labels and the moving image."""

    def _sample(self, matrix: Affine) -> npt.NDArray[np.float64]:
        """The moving image at the transformed fixed points (one cost evaluation)."""
        self.evaluations += 1
        voxels = (self.to_voxel @ matrix @ self.points)[:3]
        # Points beyond a cut field of view take the nearest edge value, not air: a brain cut
        # by the last slice must not pull the fit away from the edge.
        y = ndimage.map_coordinates(self.moving, voxels, order=1, mode="nearest")
        return np.asarray(y, dtype=np.float64)

    def __call__(self, matrix: Affine) -> float:
        y = self._sample(matrix)
        total = float(np.dot(y, y) - y.sum() ** 2 / y.size)
        if total <= 1e-9 * y.size:
            return 1.0
        sums = np.bincount(self.labels, weights=y, minlength=self.n_bins)
        squares = np.bincount(self.labels, weights=y * y, minlength=self.n_bins)
        filled = self.counts > 0
        within = float(np.sum(squares[filled] - sums[filled] ** 2 / self.counts[filled]))
        return within / total


class _MutualInformation(_CorrelationRatio):
    """2 - normalised mutual information (H(F) + H(M)) / H(F, M) of the fixed labels and the
    moving values: 0 when one determines the other, 1 when independent."""

    def _prepare(self) -> None:
        values = self.moving[self.moving > 0]
        lo, hi = np.percentile(values, [1.0, 99.5]) if values.size else (0.0, 1.0)
        self.lo, self.width = float(lo), max(float(hi - lo), 1e-6)
        p = self.counts[self.counts > 0] / self.counts.sum()
        self.fixed_entropy = float(-np.sum(p * np.log(p)))

    def __call__(self, matrix: Affine) -> float:
        y = self._sample(matrix)
        t = np.clip((y - self.lo) / self.width, 0.0, 1.0) * (_MI_BINS - 1)
        low = np.minimum(np.floor(t).astype(np.int64), _MI_BINS - 2)
        upper = t - low  # partial-volume weights: the histogram moves smoothly with y
        cells = self.labels * _MI_BINS + low
        size = self.n_bins * _MI_BINS
        counts = np.bincount(cells, weights=1.0 - upper, minlength=size)
        counts = counts + np.bincount(cells + 1, weights=upper, minlength=size)
        joint: npt.NDArray[np.float64] = counts.astype(np.float64) / float(counts.sum())
        marginal = joint.reshape(self.n_bins, _MI_BINS).sum(axis=0)
        nonzero, used = joint[joint > 0], marginal[marginal > 0]
        joint_entropy = float(-np.sum(nonzero * np.log(nonzero)))
        moving_entropy = float(-np.sum(used * np.log(used)))
        if joint_entropy <= 1e-12:
            return 1.0
        return 2.0 - (self.fixed_entropy + moving_entropy) / joint_entropy


_MEASURES: Final = {CORRELATION_RATIO: _CorrelationRatio, MUTUAL_INFORMATION: _MutualInformation}


def bin_labels(values: npt.NDArray[Any], bins: int) -> npt.NDArray[np.int64]:
    """Quantile bins 0..bins-1 of ``values`` (equal-count bins resist outliers)."""
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    out: npt.NDArray[np.int64] = np.searchsorted(edges, values).astype(np.int64)
    return out


def _expand(p: npt.NDArray[np.float64], dof: int, base: npt.NDArray[np.float64]) -> Any:
    """Free parameters of a ``dof`` stage -> the 12 parameters (7 = one isotropic scale)."""
    full = base.copy()
    if dof == 7:
        full[:6] = p[:6]
        full[6:9] = p[6]
    else:
        full[:dof] = p
    return full


def register(
    points: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    moving: FloatArray,
    moving_affine: Affine,
    *,
    initial: Affine | None = None,
    alternatives: tuple[Affine, ...] = (),
    stages: tuple[int, ...] = (6,),
    max_evaluations: int = 1500,
    seed: int = 0,
    max_points: int = 20000,
    search_range: tuple[float, float, float, float] = DEFAULT_RANGE,
    measure: str = CORRELATION_RATIO,
) -> Registration:
    """Fit ``initial`` refined in ``stages`` of 6 (rigid), 7 (+ isotropic scale), 9 (+ scale
    per axis) or 12 (+ shear) parameters so that the moving image at the transformed ``points``
    (fixed mm, (N, 3)) depends best on the fixed ``labels``; ``search_range`` bounds the
    translation (mm), rotation (degrees), scale and shear (percent) around the start: the best
    of ``initial`` and ``alternatives``. ``measure`` is :data:`CORRELATION_RATIO` or
    :data:`MUTUAL_INFORMATION`."""
    if measure not in _MEASURES:
        raise ValueError(f"measure must be one of {', '.join(_MEASURES)}, got {measure!r}")
    if not stages or any(s not in (6, 7, 9, 12) for s in stages):
        raise ValueError(f"stages must be 6, 7, 9 or 12 parameters, got {stages}")
    start = time.perf_counter()
    if len(points) > max_points:
        keep = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points, labels = points[keep], labels[keep]
    cost = _MEASURES[measure](points, labels, moving, moving_affine)
    starts = [np.eye(4) if initial is None else np.asarray(initial, dtype=np.float64)]
    starts += [np.asarray(a, dtype=np.float64) for a in alternatives]
    start_costs = [cost(a) for a in starts]
    init = starts[int(np.argmin(start_costs))]
    initial_cost = min(start_costs)
    centre = (init @ np.append(points.mean(axis=0), 1.0))[:3]
    limits = np.maximum(np.repeat(np.asarray(search_range, dtype=np.float64), 3), 1e-6)
    steps = np.repeat(np.asarray(_STEPS, dtype=np.float64), 3)
    params = np.zeros(12)
    budget = max_evaluations
    for index, dof in enumerate(stages):
        evaluations_before = cost.evaluations
        base = params.copy()

        def objective(p: npt.NDArray[np.float64], dof: int = dof, base: Any = base) -> float:
            full = _expand(p, dof, base)
            excess = float(np.sum(np.maximum(np.abs(full) - limits, 0.0) / limits))
            return cost(params_to_matrix(full, centre) @ init) + excess

        x0 = np.append(params[:6], params[6:9].mean()) if dof == 7 else params[:dof]
        share = max(budget // (len(stages) - index), 50)
        fit = optimize.minimize(
            objective,
            x0,
            method="Powell",
            options={
                "xtol": 0.05,
                "ftol": 1e-3,
                "maxfev": share,
                "direc": np.diag(steps[:dof] if dof != 7 else steps[:7]),
            },
        )
        params = _expand(np.asarray(fit.x, dtype=np.float64), dof, base)
        budget -= cost.evaluations - evaluations_before
    matrix = params_to_matrix(params, centre) @ init
    return Registration(
        matrix=matrix,
        cost=cost(matrix),
        initial_cost=initial_cost,
        evaluations=cost.evaluations,
        seconds=time.perf_counter() - start,
        measure=measure,
        start_similarities=tuple(1.0 - c for c in start_costs),
    )
