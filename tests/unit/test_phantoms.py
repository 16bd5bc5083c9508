"""Synthetic tumour phantoms: reproducibility, per-type label rules, contrast, files and CLI.

Cases are generated on a coarse 3 mm grid (64 x 75 x 64) to keep the module to a few seconds;
the rules checked here do not depend on the spacing. Skips without the training extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("scipy", reason="scipy (training extra) not installed")
pytest.importorskip("nilearn", reason="nilearn (training extra) not installed")

import nibabel as nib
from scipy import ndimage as ndi

from tumorlens_train.phantoms import (
    Grid,
    Label,
    Phantom,
    PhantomConfig,
    TumourType,
    brats_to_internal,
    case_seed,
    case_type,
    generate_case,
    internal_to_brats,
    read_case,
    write_case,
)
from tumorlens_train.phantoms.__main__ import main as phantoms_main
from tumorlens_train.phantoms.acquisition import Acquisition, SliceStack, acquire
from tumorlens_train.phantoms.command import register
from tumorlens_train.phantoms.contrast import (
    sample_contrast,
    soften_lesion_contrast,
    t1ce_uptake,
)
from tumorlens_train.phantoms.labels import parse_types
from tumorlens_train.phantoms.template import SELLA_MNI_MM

SPACING = 3.0
SEEDS = (0, 1, 2)
FACES = ndi.generate_binary_structure(3, 1)
SEQUENCES = ("t1", "t1ce", "t2", "flair")


@cache
def case(tumour_type: str, seed: int, full_head: bool = True) -> Phantom:
    return generate_case(seed, tumour_type, PhantomConfig(spacing=SPACING, full_head=full_head))


def counts(seg: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    return np.bincount(seg.ravel(), minlength=4)


def median(ph: Phantom, seq: str, mask: npt.NDArray[np.bool_]) -> float:
    assert mask.sum() >= 10, "too few voxels for a stable median"
    return float(np.median(ph.images[seq][mask]))


def pure(ph: Phantom, name: str, threshold: float) -> npt.NDArray[np.bool_]:
    """Voxels of one healthy tissue, away from any tumour label."""
    far = ~ndi.binary_dilation(ph.seg > 0, iterations=2)
    return (ph.tissue[name] > threshold) & (ph.tissue["brain"] > 0.9) & far


# --- reproducibility ---------------------------------------------------------------------------
def test_same_seed_gives_identical_arrays() -> None:
    a = generate_case(11, "hgg", PhantomConfig(spacing=SPACING))
    b = generate_case(11, "hgg", PhantomConfig(spacing=SPACING))
    assert np.array_equal(a.seg, b.seg)
    for seq in SEQUENCES:
        assert np.array_equal(a.images[seq], b.images[seq])
    assert a.metadata == b.metadata


def test_different_seed_gives_different_case() -> None:
    a, b = case("hgg", 0), case("hgg", 1)
    assert not np.array_equal(a.seg, b.seg)
    assert not np.array_equal(a.images["t1"], b.images["t1"])


def test_type_drawn_from_seed_is_reproducible() -> None:
    config = PhantomConfig(spacing=SPACING)
    first = generate_case(3, None, config).metadata["tumour_type"]
    assert generate_case(3, None, config).metadata["tumour_type"] == first
    assert first in {t.value for t in TumourType}


def test_dataset_seeds_and_types() -> None:
    assert case_seed(0, 1) == case_seed(0, 1)
    assert len({case_seed(0, i) for i in range(100)} | {case_seed(1, i) for i in range(100)}) == 200
    types = parse_types("hgg,lgg")
    assert [case_type(types, i) for i in range(4)] == ["hgg", "lgg", "hgg", "lgg"]
    assert parse_types("all") == tuple(TumourType)
    with pytest.raises(ValueError, match="unknown tumour type"):
        parse_types("hgg,glioblastoma")


# --- grid and labels ---------------------------------------------------------------------------
def test_grid_is_fixed_ras_box() -> None:
    grid = Grid.for_spacing(2.0)
    assert grid.shape == (96, 112, 96)
    assert np.allclose(np.diag(grid.affine)[:3], 2.0)
    assert np.allclose(grid.affine @ [47.5, 55.5, 47.5, 1], [0, -18, 10, 1])
    assert Grid.for_spacing(1.5).shape == (128, 149, 128)


def test_label_mapping_roundtrip() -> None:
    internal = np.array([0, 1, 2, 3], dtype=np.uint8)
    assert internal_to_brats(internal).tolist() == [0, 1, 2, 4]
    assert brats_to_internal(internal_to_brats(internal)).tolist() == [0, 1, 2, 3]


# --- label rules per type ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_healthy_has_no_labels(seed: int) -> None:
    ph = case("healthy", seed)
    assert not ph.seg.any()
    assert ph.metadata["lesion_count"] == 0
    assert ph.metadata["grade"] is None


@pytest.mark.parametrize("seed", SEEDS)
def test_hgg_necrosis_inside_enhancing_rim_with_wm_oedema(seed: int) -> None:
    ph = case("hgg", seed)
    n = counts(ph.seg)
    assert n[Label.CORE] > 0 and n[Label.OEDEMA] > 0 and n[Label.ENHANCING] > 0
    assert ph.metadata["grade"] == "HGG"
    core = ph.seg == Label.CORE
    border = ndi.binary_dilation(core, FACES) & ~core
    # Necrosis is enclosed: what touches it is enhancing rim, not oedema or brain.
    assert (ph.seg[border] == Label.ENHANCING).all()
    # Intra-axial in white matter; oedema larger than the core and mostly in white matter.
    centre = tuple(ph.metadata["lesions"][0]["centre_voxel"])
    assert ph.tissue["wm"][centre] > 0.5
    assert n[Label.OEDEMA] > 0.5 * (n[Label.CORE] + n[Label.ENHANCING])
    oedema = ph.seg == Label.OEDEMA
    assert ph.tissue["wm"][oedema].mean() > ph.tissue["gm"][oedema].mean()


@pytest.mark.parametrize("seed", SEEDS)
def test_lgg_is_non_enhancing_with_little_oedema(seed: int) -> None:
    ph = case("lgg", seed)
    n = counts(ph.seg)
    tumour = n[1:].sum()
    assert n[Label.CORE] > 0
    assert n[Label.ENHANCING] < 0.05 * tumour
    assert n[Label.OEDEMA] < n[Label.CORE]
    assert ph.metadata["grade"] == "LGG"


@pytest.mark.parametrize("seed", SEEDS)
def test_metastases_count_and_grey_white_junction(seed: int) -> None:
    ph = case("metastasis", seed)
    count = ph.metadata["lesion_count"]
    assert 1 <= count <= 4
    _, components = ndi.label(np.isin(ph.seg, [Label.CORE, Label.ENHANCING]))
    assert components == count
    n = counts(ph.seg)
    assert n[Label.ENHANCING] > 0
    # Oedema is large for the lesion size.
    assert n[Label.OEDEMA] >= n[Label.CORE] + n[Label.ENHANCING]
    for lesion in ph.metadata["lesions"]:
        x, y, z = lesion["centre_voxel"]
        near = (slice(x - 1, x + 2), slice(y - 1, y + 2), slice(z - 1, z + 2))
        assert ph.tissue["gm"][near].max() > 0.2, lesion
        assert ph.tissue["wm"][near].max() > 0.2, lesion


@pytest.mark.parametrize("seed", SEEDS)
def test_meningioma_is_extra_axial_solid_enhancing(seed: int) -> None:
    ph = case("meningioma", seed)
    n = counts(ph.seg)
    tumour = ph.seg > 0
    solid = ph.seg == Label.ENHANCING
    assert n[Label.CORE] == 0 and solid.any()
    assert n[Label.OEDEMA] <= n[Label.ENHANCING]
    # A good part of its surface faces non-brain (dura/skull): it sits on the brain surface.
    border = ndi.binary_dilation(solid, FACES) & ~tumour
    assert np.mean(ph.tissue["brain"][border] < 0.5) > 0.2
    _, components = ndi.label(solid)
    assert components == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_pituitary_is_sellar_midline_without_oedema(seed: int) -> None:
    ph = case("pituitary", seed)
    n = counts(ph.seg)
    tumour = ph.seg > 0
    assert n[Label.OEDEMA] == 0
    assert n[Label.ENHANCING] >= 0.75 * tumour.sum()
    lesion = ph.metadata["lesions"][0]
    atlas = np.asarray(lesion["atlas_centre_mm"])
    assert abs(atlas[0] - SELLA_MNI_MM[0]) < 4.0
    assert np.linalg.norm(atlas - SELLA_MNI_MM) < 12.0
    # Midline of this (randomly posed) head: the brain's left-right centre.
    brain_x = np.nonzero(ph.tissue["brain"] > 0.5)[0].mean() * SPACING + ph.affine[0, 3]
    assert abs(lesion["centre_mm"][0] - brain_x) < 10.0
    # Below the brain, not in it.
    assert ph.tissue["brain"][tumour].mean() < 0.5


# --- contrast ----------------------------------------------------------------------------------
@pytest.mark.parametrize("tumour_type", ["healthy", "hgg", "meningioma"])
def test_normal_tissue_intensity_order(tumour_type: str) -> None:
    ph = case(tumour_type, 0)
    wm, gm, csf = pure(ph, "wm", 0.9), pure(ph, "gm", 0.7), pure(ph, "csf", 0.9)
    for seq in ("t1", "t1ce"):
        assert median(ph, seq, wm) > median(ph, seq, gm) > median(ph, seq, csf), seq
    assert median(ph, "t2", csf) > median(ph, "t2", gm) > median(ph, "t2", wm)
    assert median(ph, "flair", gm) > median(ph, "flair", wm) > median(ph, "flair", csf)


def test_tumour_intensities() -> None:
    ph = case("hgg", 0)
    wm, gm = pure(ph, "wm", 0.9), pure(ph, "gm", 0.7)
    enhancing, necrosis = ph.seg == Label.ENHANCING, ph.seg == Label.CORE
    oedema = (ph.seg == Label.OEDEMA) & ~ndi.binary_dilation(ph.seg % 2 == 1, iterations=1)
    assert median(ph, "t1ce", enhancing) > median(ph, "t1ce", wm)
    assert median(ph, "t1ce", necrosis) < median(ph, "t1ce", gm)
    assert median(ph, "flair", oedema) > median(ph, "flair", gm)
    assert median(ph, "t2", oedema) > median(ph, "t2", wm)
    lgg = case("lgg", 0)
    core = lgg.seg == Label.CORE
    assert median(lgg, "flair", core) > median(lgg, "flair", pure(lgg, "gm", 0.7))
    assert median(lgg, "t1ce", core) < median(lgg, "t1ce", pure(lgg, "wm", 0.9))


def test_lesion_conspicuity_softens_only_t2_flair_lesions() -> None:
    """Same case, subtler non-enhancing tumour: anatomy, labels and every other voxel equal;
    the LGG core's FLAIR lies between white matter's and the full-contrast value."""
    full = case("lgg", 0)
    config = PhantomConfig(spacing=SPACING, lesion_conspicuity=(0.5, 0.5))
    soft = generate_case(0, "lgg", config)
    assert soft.metadata["lesion_conspicuity"] == 0.5 and full.metadata["lesion_conspicuity"] == 1
    assert np.array_equal(soft.seg, full.seg)
    core = full.seg == Label.CORE
    far = ~ndi.binary_dilation(full.seg > 0, iterations=4)
    for seq in SEQUENCES:
        assert np.allclose(soft.images[seq][far], full.images[seq][far], rtol=1e-5), seq
    wm = median(full, "flair", pure(full, "wm", 0.9))
    soft_core, full_core = median(soft, "flair", core), median(full, "flair", core)
    assert wm < soft_core < full_core
    # halfway in contrast, give or take texture, noise and the per-case jitter
    assert 0.35 < (soft_core - wm) / (full_core - wm) < 0.65
    # an enhancing rim keeps its contrast (only partial volume with the softer oedema around
    # it moves it, ~2 %), while that oedema's FLAIR drops
    hgg = case("hgg", 0)
    hgg_soft = generate_case(0, "hgg", config)
    rim, oedema = hgg.seg == Label.ENHANCING, hgg.seg == Label.OEDEMA
    assert median(hgg_soft, "t1ce", rim) == pytest.approx(median(hgg, "t1ce", rim), rel=0.05)
    assert median(hgg_soft, "flair", oedema) < 0.9 * median(hgg, "flair", oedema)
    with pytest.raises(ValueError, match="conspicuity"):
        soften_lesion_contrast(sample_contrast(np.random.default_rng(0)), 1.5)


@pytest.mark.parametrize("tumour_type", ["healthy", "meningioma"])
def test_dural_sinuses_are_enhancing_background_inside_the_dura(tumour_type: str) -> None:
    """Same case with sinuses: labels equal, images changed only at the sinuses (a few tens
    of mL along the midline and the occiput, outside any tumour), which enhance like tumour
    on T1c; without the option nothing is drawn (existing datasets stay as they were)."""
    config = PhantomConfig(spacing=SPACING, thick_slice_prob=0.0)
    plain = generate_case(1, tumour_type, config)
    drawn = generate_case(1, tumour_type, dataclasses.replace(config, dural_sinuses=True))
    assert plain.metadata["dural_sinuses"] is None
    assert set(drawn.metadata["dural_sinuses"]) == {"t1ce_gain", "flow_void"}
    assert np.array_equal(drawn.seg, plain.seg)
    changed = np.logical_or.reduce(
        [
            np.abs(drawn.images[s] - plain.images[s]) > 1e-4 * plain.images[s].max()
            for s in SEQUENCES
        ]
    )
    ml = changed.sum() * SPACING**3 / 1000.0
    assert 5.0 < ml < 60.0, ml  # lumen of the SSS and both transverse sinuses, blurred
    assert not (changed & (plain.seg > 0)).any()
    world = (plain.affine @ np.vstack([np.argwhere(changed).T, np.ones(int(changed.sum()))]))[:3]
    # Superior sagittal sinus near the midline, transverse sinuses behind the ears.
    assert np.median(np.abs(world[0][world[2] > 20])) < 12.0
    assert (world[1][world[2] < 20] < -40).mean() > 0.9
    bright = changed & (drawn.images["t1ce"] > plain.images["t1ce"])
    wm = median(plain, "t1ce", pure(plain, "wm", 0.9))
    assert np.percentile(drawn.images["t1ce"][bright], 90) > 1.25 * wm


def test_t1ce_uptake_brightens_only_t1ce_of_non_enhancing_tumour_and_oedema() -> None:
    """Same LGG with a T1c gain of 1.3: labels, T1, T2 and FLAIR equal; T1c changed only in
    and around the tumour (partial volume), where it rises by about the gain and stays below
    enhancing tumour's base signal; without the option nothing is drawn."""
    config = PhantomConfig(spacing=SPACING, thick_slice_prob=0.0)
    plain = generate_case(2, "lgg", config)
    drawn = generate_case(2, "lgg", dataclasses.replace(config, t1ce_uptake=(1.3, 1.3)))
    assert plain.metadata["t1ce_uptake"] == 1.0 and drawn.metadata["t1ce_uptake"] == 1.3
    assert np.array_equal(drawn.seg, plain.seg)
    for s in ("t1", "t2", "flair"):
        assert np.array_equal(drawn.images[s], plain.images[s]), s
    changed = (
        np.abs(drawn.images["t1ce"] - plain.images["t1ce"]) > 1e-4 * plain.images["t1ce"].max()
    )
    near = ndi.binary_dilation(plain.seg > 0, iterations=4)  # blur reaches a few voxels
    assert changed.any() and not (changed & ~near).any()
    core = plain.seg == Label.CORE
    ratio = np.median(drawn.images["t1ce"][core] / plain.images["t1ce"][core])
    assert ratio == pytest.approx(1.3, abs=0.03)
    with pytest.raises(ValueError, match="uptake"):
        t1ce_uptake(sample_contrast(np.random.default_rng(0)), 1.6)


def test_brain_only_is_skull_stripped_and_full_head_is_not() -> None:
    stripped, full = case("meningioma", 1, full_head=False), case("meningioma", 1)
    assert np.array_equal(stripped.seg, full.seg)
    foreground = (stripped.tissue["brain"] > 0.5) | (stripped.seg > 0)
    for seq in SEQUENCES:
        assert not stripped.images[seq][~foreground].any()
        assert (stripped.images[seq][foreground] > 0).mean() > 0.99
        # Scalp and skull marrow give signal outside the brain in a full-head study.
        outside = full.images[seq][~foreground]
        assert np.percentile(outside, 95) > 0.3 * np.median(full.images[seq][foreground])


def test_thick_slices_blur_along_the_slice_axis() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 32), dtype=np.float32)
    acq = Acquisition(bias_sd=0.0, noise=0.0, scale=1.0, slices=SliceStack(2, 6.0, 0.0, 0.5))
    out = acquire(image, acq, 2.0, rng)
    assert out.shape == image.shape
    along = np.abs(np.diff(out, axis=2)).mean()
    across = np.abs(np.diff(out, axis=0)).mean()
    assert along < 0.5 * across


# --- files and CLI -----------------------------------------------------------------------------
def test_write_case_in_brats_layout(tmp_path: Path) -> None:
    ph = case("hgg", 2)
    meta = write_case(ph, tmp_path, "phantom_00042")
    folder = tmp_path / "phantom_00042"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [f"phantom_00042_{k}.nii.gz" for k in ("t1", "t1ce", "t2", "flair", "seg")] + ["meta.json"]
    )
    for kind in ("t1", "t1ce", "t2", "flair", "seg"):
        img = nib.load(folder / f"phantom_00042_{kind}.nii.gz")
        assert isinstance(img, nib.Nifti1Image)
        assert img.shape == ph.seg.shape
        assert np.allclose(img.affine, ph.affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.get_data_dtype() == (np.uint8 if kind == "seg" else np.int16)
    seg_file = np.asarray(nib.load(folder / "phantom_00042_seg.nii.gz").dataobj)
    assert set(np.unique(seg_file)) == {0, 1, 2, 4}  # BraTS 2019/2020: enhancing is 4
    images, seg, affine, stored = read_case(folder)
    assert np.array_equal(seg, ph.seg)
    assert np.allclose(affine, ph.affine)
    assert np.abs(images["t1"].astype(np.float32) - ph.images["t1"]).max() <= 0.5 + 1e-3
    assert stored == json.loads(json.dumps(meta))
    for key in ("tumour_type", "grade", "seed", "lesion_count", "volumes_ml"):
        assert key in stored
    voxel_ml = SPACING**3 / 1000
    assert stored["volumes_ml"]["oedema"] == pytest.approx(
        (ph.seg == Label.OEDEMA).sum() * voxel_ml, abs=1e-3
    )


def test_cli_writes_reproducible_dataset(tmp_path: Path) -> None:
    argv = ["--n", "3", "--seed", "5", "--types", "hgg,healthy,pituitary", "--spacing", "6"]
    assert phantoms_main([*argv, "--out", str(tmp_path / "a"), "--brain-only"]) == 0
    assert phantoms_main([*argv, "--out", str(tmp_path / "b"), "--brain-only"]) == 0
    index = json.loads((tmp_path / "a" / "cases.json").read_text())
    assert [c["case_id"] for c in index["cases"]] == [f"phantom_{i:05d}" for i in range(3)]
    assert [c["tumour_type"] for c in index["cases"]] == ["hgg", "healthy", "pituitary"]
    for entry in index["cases"]:
        a_img, a_seg, _, a_meta = read_case(tmp_path / "a" / entry["case_id"])
        b_img, b_seg, _, _ = read_case(tmp_path / "b" / entry["case_id"])
        assert np.array_equal(a_seg, b_seg) and np.array_equal(a_img["flair"], b_img["flair"])
        # A case can be regenerated from its metadata alone.
        again = generate_case(
            a_meta["seed"], a_meta["tumour_type"], PhantomConfig(spacing=6.0, full_head=False)
        )
        assert np.array_equal(again.seg, a_seg)
        assert a_meta["full_head"] is False


def test_register_adds_phantoms_subcommand(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="tumorlens-train")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["phantoms", "--n", "1", "--out", str(tmp_path), "--types", "lgg"])
    assert args.types == (TumourType.LGG,)
    assert args.full_head is True and args.workers == 1 and args.spacing == 2.0
    assert args.lesion_conspicuity == (1.0, 1.0) and args.dural_sinuses is False
    sinuses = parser.parse_args(["phantoms", "--n", "1", "--out", str(tmp_path), "--dural-sinuses"])
    assert sinuses.dural_sinuses is True
    flag = ["--lesion-conspicuity", "0.5,0.9"]
    again = parser.parse_args(["phantoms", "--n", "1", "--out", str(tmp_path), *flag])
    assert again.lesion_conspicuity == (0.5, 0.9)
    for bad in ("0.9,0.5", "0.5", "-0.1,1", "a,b"):
        with pytest.raises(SystemExit):
            parser.parse_args(["phantoms", "--n", "1", "--out", str(tmp_path), flag[0], bad])
    assert args.t1ce_uptake == (1.0, 1.0)
    uptake = ["--t1ce-uptake", "1,1.35"]
    drawn = parser.parse_args(["phantoms", "--n", "1", "--out", str(tmp_path), *uptake])
    assert drawn.t1ce_uptake == (1.0, 1.35)
    for bad in ("0.9,1.2", "1.2,1.6", "1.3,1.1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["phantoms", "--n", "1", "--out", str(tmp_path), uptake[0], bad])
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["phantoms", "--n", "1", "--out", str(tmp_path), "--types", "glioma"])


@pytest.mark.slow
def test_workers_match_single_process(tmp_path: Path) -> None:
    argv = ["--n", "2", "--seed", "9", "--types", "metastasis", "--spacing", "6"]
    assert phantoms_main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert phantoms_main([*argv, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    for i in range(2):
        _, seg1, _, meta1 = read_case(tmp_path / "one" / f"phantom_{i:05d}")
        _, seg2, _, meta2 = read_case(tmp_path / "two" / f"phantom_{i:05d}")
        assert np.array_equal(seg1, seg2) and meta1 == meta2
