"""make_study: NIfTI volumes -> DICOM MR study, checked against the affine and dicom2nifti."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from dicom2nifti import convert_dicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from tumorlens.cli import main
from tumorlens.dicomio.make_study import WrittenSeries, WrittenStudy, display_order, make_study
from tumorlens.errors import ConfigurationError

SEQUENCES = ("t1", "t1c", "t2", "flair")
STUDY_TIME = datetime(2024, 5, 6, 9, 30, 15)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
DCIODVFY = shutil.which("dciodvfy")


def oblique_affine() -> npt.NDArray[np.float64]:
    """0.9 x 0.85 x 5.5 mm voxels (unequal in-plane, so swapped spacings show), x flipped,
    rotated 7 deg about x and 4 deg about z."""
    ax, az = np.deg2rad(7.0), np.deg2rad(4.0)
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag([-0.9, 0.85, 5.5])
    affine[:3, 3] = [30.25, -41.5, -52.125]
    return affine


def synthetic_volume(shape: tuple[int, int, int] = (64, 48, 20)) -> npt.NDArray[np.int16]:
    # Random values make any transposition or flip of the pixel data show.
    return np.random.default_rng(7).integers(0, 3000, size=shape, dtype=np.int16)


def save_nifti(path: Path, data: npt.NDArray[np.generic], affine: npt.ArrayLike) -> Path:
    image = nib.Nifti1Image(data, np.asarray(affine))
    image.set_qform(np.asarray(affine), code=1)
    image.set_sform(np.asarray(affine), code=1)
    nib.save(image, str(path))
    return path


def load_nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image)
    return image


def read_series(series: WrittenSeries) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in series.paths]


def world(affine: npt.NDArray[np.float64], ijk: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return affine[:3, :3] @ ijk + affine[:3, 3:4]


def assert_geometry(datasets: Sequence[Dataset], affine_ras: npt.ArrayLike) -> None:
    """IOP, PixelSpacing, IPP, thickness and location per slice, straight from the affine."""
    lps = RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    col0, col1, col2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    normal = np.cross(col0 / np.linalg.norm(col0), col1 / np.linalg.norm(col1))
    for k, ds in enumerate(datasets):
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        np.testing.assert_allclose(iop[:3], col0 / np.linalg.norm(col0), atol=1e-9)
        np.testing.assert_allclose(iop[3:], col1 / np.linalg.norm(col1), atol=1e-9)
        np.testing.assert_allclose(
            np.array(ds.PixelSpacing, dtype=float),
            [np.linalg.norm(col1), np.linalg.norm(col0)],
            atol=1e-9,
        )
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(ipp, (lps @ [0, 0, k, 1])[:3], atol=1e-6)
        assert float(ds.SliceThickness) == pytest.approx(np.linalg.norm(col2), abs=1e-6)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(np.linalg.norm(col2), abs=1e-6)
        assert float(ds.SliceLocation) == pytest.approx(float(ipp @ normal), abs=1e-6)
        assert ds.InstanceNumber == k + 1


def assert_same_voxels(converted: nib.Nifti1Image, source: nib.Nifti1Image) -> None:
    """Every converted voxel lies (to 1e-3 mm) where a source voxel lies, with its value.

    dicom2nifti reorients to LAS, so voxels are matched through world coordinates.
    """
    out_affine = np.asarray(converted.affine, dtype=np.float64)
    src_affine = np.asarray(source.affine, dtype=np.float64)
    out_ijk = np.indices(converted.shape).reshape(3, -1).astype(np.float64)
    out_world = world(out_affine, out_ijk)
    src_ijk = np.rint(np.linalg.solve(src_affine[:3, :3], out_world - src_affine[:3, 3:4]))
    assert np.abs(world(src_affine, src_ijk) - out_world).max() < 1e-3
    src_index = tuple(src_ijk.astype(int))
    assert np.unique(np.ravel_multi_index(src_index, source.shape)).size == np.prod(source.shape)
    out_values = np.asanyarray(converted.dataobj).reshape(-1)
    np.testing.assert_array_equal(out_values, np.asanyarray(source.dataobj)[src_index])


def dicom2nifti_image(series: WrittenSeries, output: Path) -> nib.Nifti1Image:
    result = convert_dicom.dicom_array_to_nifti(read_series(series), output, reorient_nifti=True)
    image: nib.Nifti1Image = result["NII"]
    return image


@pytest.fixture(scope="module")
def synthetic_nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nifti") / "synthetic.nii.gz"
    return save_nifti(path, synthetic_volume(), oblique_affine())


@pytest.fixture(scope="module")
def synthetic_study(
    synthetic_nifti: Path, tmp_path_factory: pytest.TempPathFactory
) -> WrittenStudy:
    return make_study(
        dict.fromkeys(SEQUENCES, synthetic_nifti),
        tmp_path_factory.mktemp("study"),
        seed=42,
        study_datetime=STUDY_TIME,
        patient_birth_date="19700215",
        patient_sex="F",
    )


def by_sequence(study: WrittenStudy) -> dict[str, WrittenSeries]:
    return {series.sequence: series for series in study.series}


def test_writes_one_series_per_sequence(synthetic_study: WrittenStudy) -> None:
    assert [s.sequence for s in synthetic_study.series] == ["t1", "t2", "flair", "t1c"]
    assert [s.series_number for s in synthetic_study.series] == [1, 2, 3, 4]
    assert all(s.n_instances == 20 for s in synthetic_study.series)
    assert len({s.series_instance_uid for s in synthetic_study.series}) == 4
    for series in synthetic_study.series:
        assert all(
            p.parent.name == f"{series.series_number}_{series.sequence}" for p in series.paths
        )


def test_instances_are_mr_images_in_explicit_little_endian(synthetic_study: WrittenStudy) -> None:
    ds = pydicom.dcmread(synthetic_study.paths[0])
    assert ds.preamble is not None
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == MRImageStorage == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "MR"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert ds.PatientPosition == "HFS"
    assert ds.BodyPartExamined == "BRAIN"
    assert ds.PatientAge == "054Y"
    assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
    assert (ds.Rows, ds.Columns) == (48, 64)
    # Type 2 attributes are present even when empty (PS3.3 C.7.2.1).
    for keyword in (
        "ReferringPhysicianName",
        "AccessionNumber",
        "StudyID",
        "PatientBirthDate",
        "PatientSex",
        "PositionReferenceIndicator",
    ):
        assert keyword in ds, keyword
    assert ds.AccessionNumber
    assert float(ds.WindowWidth) > 0


def test_geometry_matches_affine(synthetic_study: WrittenStudy) -> None:
    for series in synthetic_study.series:
        assert_geometry(read_series(series), display_order(synthetic_volume(), oblique_affine())[1])


def test_pixels_are_the_volume_transposed_per_slice(synthetic_study: WrittenStudy) -> None:
    volume = display_order(synthetic_volume(), oblique_affine())[0]
    for k, ds in enumerate(read_series(synthetic_study.series[0])):
        assert ds.PixelRepresentation == 0
        assert ds.BitsStored == 12
        np.testing.assert_array_equal(ds.pixel_array, volume[:, :, k].T)


def test_dicom2nifti_round_trip(
    synthetic_study: WrittenStudy, synthetic_nifti: Path, tmp_path: Path
) -> None:
    source = load_nifti(synthetic_nifti)
    for series in synthetic_study.series[:2]:
        converted = dicom2nifti_image(series, tmp_path / f"{series.sequence}.nii.gz")
        assert_same_voxels(converted, source)


def test_sequence_attributes(synthetic_study: WrittenStudy) -> None:
    first = {name: pydicom.dcmread(s.paths[0]) for name, s in by_sequence(synthetic_study).items()}
    assert first["t1"].SeriesDescription == "AX T1 SE"
    assert first["t1c"].SeriesDescription == "AX T1 SE POST GAD"
    assert first["t2"].SeriesDescription == "AX T2 TSE"
    assert first["flair"].SeriesDescription == "AX T2 FLAIR"
    assert list(first["flair"].ScanningSequence) == ["SE", "IR"]
    assert float(first["flair"].InversionTime) == 2500
    assert float(first["flair"].RepetitionTime) > float(first["t2"].RepetitionTime)
    assert float(first["t1"].RepetitionTime) < 1000
    assert float(first["t2"].EchoTime) >= 80
    for name in ("t1", "t1c", "t2"):
        assert "InversionTime" not in first[name]
    assert first["t1c"].ContrastBolusAgent == "Gadobutrol"
    assert all("ContrastBolusAgent" not in first[n] for n in ("t1", "t2", "flair"))
    for ds in first.values():
        assert ds.MRAcquisitionType == "2D"
        assert float(ds.MagneticFieldStrength) == 1.5
        assert ds.ProtocolName
        assert ds.StudyInstanceUID == synthetic_study.study_instance_uid
        assert ds.FrameOfReferenceUID == synthetic_study.frame_of_reference_uid
    assert len({ds.SeriesInstanceUID for ds in first.values()}) == 4
    assert first["t1c"].SeriesTime > first["t1"].SeriesTime


def test_seed_makes_output_reproducible(synthetic_nifti: Path, tmp_path: Path) -> None:
    def build(out: str, seed: int | None) -> WrittenStudy:
        return make_study(
            {"t2": synthetic_nifti}, tmp_path / out, seed=seed, study_datetime=STUDY_TIME
        )

    a, b, c, d = build("a", 5), build("b", 5), build("c", 6), build("d", None)
    assert a.study_instance_uid == b.study_instance_uid
    assert a.series[0].series_instance_uid == b.series[0].series_instance_uid
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a.paths, b.paths, strict=True))
    assert c.study_instance_uid != a.study_instance_uid
    assert d.study_instance_uid != a.study_instance_uid
    sop_uids = {pydicom.dcmread(p).SOPInstanceUID for study in (a, c) for p in study.paths}
    assert len(sop_uids) == 2 * len(a.paths)


def test_float_volume_is_scaled_to_12_bits(tmp_path: Path) -> None:
    volume = np.linspace(-1.5, 2.5, 16 * 12 * 4, dtype=np.float32).reshape(16, 12, 4)
    nifti = save_nifti(tmp_path / "float.nii.gz", volume, np.diag([1.0, 1.0, 3.0, 1.0]))
    study = make_study({"flair": nifti}, tmp_path / "out", seed=1)
    pixels = np.stack([ds.pixel_array for ds in read_series(study.series[0])], axis=-1)
    assert pixels.min() == 0 and pixels.max() == 4095
    expected = np.rint((volume - volume.min()) / (volume.max() - volume.min()) * 4095)
    shown = expected[::-1, ::-1]  # voxel axes towards the right and the front: both flip
    np.testing.assert_array_equal(pixels, shown.transpose(1, 0, 2))
    ds = pydicom.dcmread(study.paths[0])
    assert (ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (12, 11, 0)
    assert "RescaleSlope" not in ds


def test_signed_volume_is_stored_signed(tmp_path: Path) -> None:
    volume = np.arange(-200, 8 * 6 * 3 - 200, dtype=np.int16).reshape(8, 6, 3)
    nifti = save_nifti(tmp_path / "signed.nii.gz", volume, np.diag([-1.0, 1.0, 2.0, 1.0]))
    study = make_study({"t1": nifti}, tmp_path / "out")
    datasets = read_series(study.series[0])
    assert datasets[0].PixelRepresentation == 1
    pixels = np.stack([ds.pixel_array for ds in datasets], axis=-1)
    shown = volume[:, ::-1]  # axis 0 already runs to the left; axis 1 (to the front) flips
    np.testing.assert_array_equal(pixels, shown.transpose(1, 0, 2))


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        # coronal, voxel axis 0 to the patient's right, axis 1 up: both flip (left, feet)
        (((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)), ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0))),
        # sagittal, axis 0 to the front, axis 1 down: axis 0 flips (back), axis 1 stays
        (((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)), ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0))),
    ],
)
def test_display_order_of_coronal_and_sagittal_stacks(
    columns: tuple[tuple[float, ...], tuple[float, ...]],
    expected: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    """Rows towards the patient's left or back; columns towards the feet when head-foot."""
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = columns  # RAS directions of voxel axes 0 and 1
    affine[:3, 2] = np.cross(columns[0], columns[1])
    _, new = display_order(np.zeros((4, 3, 2)), affine)
    np.testing.assert_allclose(new[:3, 0], expected[0], atol=1e-12)
    np.testing.assert_allclose(new[:3, 1], expected[1], atol=1e-12)


def test_display_order_puts_anterior_at_the_top_and_the_right_on_the_left() -> None:
    """Voxel axes towards the patient's right and front are flipped in-plane, so rows run
    towards the left and columns towards the back, as axial images display."""
    volume = np.arange(4 * 3 * 2).reshape(4, 3, 2)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # voxel axes towards RAS +x (right), +y (anterior)
    shown, new = display_order(volume, affine)
    lps = RAS_TO_LPS @ new
    assert lps[0, 0] > 0 and lps[1, 1] > 0  # towards patient left, towards the back
    np.testing.assert_array_equal(shown, volume[::-1, ::-1, :])
    # The same voxel sits at the same place in space.
    np.testing.assert_allclose(new @ [0, 0, 1, 1], affine @ [3, 2, 1, 1])
    # Already in display order: unchanged.
    again, same = display_order(shown, new)
    np.testing.assert_array_equal(again, shown)
    np.testing.assert_allclose(same, new)


def test_unknown_sequence_is_refused(synthetic_nifti: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown sequence.*dwi.*t1, t1c, t2, flair"):
        make_study({"t1": synthetic_nifti, "dwi": synthetic_nifti}, tmp_path)
    assert not any(tmp_path.iterdir())


def test_refuses_to_write_into_a_used_series_folder(synthetic_nifti: Path, tmp_path: Path) -> None:
    make_study({"t1": synthetic_nifti}, tmp_path)
    with pytest.raises(ConfigurationError, match="not empty"):
        make_study({"t1": synthetic_nifti}, tmp_path)


def test_four_dimensional_volume_is_refused(tmp_path: Path) -> None:
    nifti = save_nifti(tmp_path / "4d.nii.gz", np.zeros((4, 4, 3, 2), np.int16), np.eye(4))
    with pytest.raises(ConfigurationError, match="3D"):
        make_study({"t1": nifti}, tmp_path / "out")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(synthetic_study: WrittenStudy) -> None:
    assert DCIODVFY is not None
    for series in synthetic_study.series:
        run = subprocess.run(
            [DCIODVFY, str(series.paths[0])], capture_output=True, text=True, check=False
        )
        report = run.stdout + run.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{series.sequence}:\n{report}"


def test_cli_make_study(
    synthetic_nifti: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "make-study",
            "--t1",
            str(synthetic_nifti),
            "--flair",
            str(synthetic_nifti),
            "--out",
            str(out),
            "--patient-name",
            "DOE^JANE",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    uid = printed.split()[1]
    assert printed.startswith("StudyInstanceUID ")
    assert "40 instances in 2 series" in printed
    ds = pydicom.dcmread(next((out / "1_t1").iterdir()))
    assert ds.StudyInstanceUID == uid
    assert ds.PatientName == "DOE^JANE"


def test_real_case(tcga_case: Path, tmp_path: Path) -> None:
    """TUMORLENS_DATA's TCGA-FG-6692: four oblique sequences with different matrices."""
    volumes = {s: tcga_case / f"{s}.nii.gz" for s in SEQUENCES}
    study = make_study(volumes, tmp_path, seed=1, study_datetime=STUDY_TIME)
    assert [s.n_instances for s in study.series] == [26, 26, 26, 26]
    frames: set[str] = set()
    for series in study.series:
        source = load_nifti(volumes[series.sequence])
        datasets = read_series(series)
        assert_geometry(datasets, display_order(np.asarray(source.dataobj), source.affine)[1])
        assert (datasets[0].Columns, datasets[0].Rows) == source.shape[:2]
        frames.update(ds.FrameOfReferenceUID for ds in datasets)
    assert frames == {study.frame_of_reference_uid}
    t2 = by_sequence(study)["t2"]
    converted = dicom2nifti_image(t2, tmp_path / "t2.nii.gz")
    assert_same_voxels(converted, load_nifti(volumes["t2"]))
