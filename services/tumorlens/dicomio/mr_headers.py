"""Acquisition attributes of a routine brain-tumour MR protocol, one entry per sequence.

The values are those a 1.5 T / 3 T clinical scanner records for a 2D axial pre/post-contrast
protocol (PS3.3 C.8.3.1 MR Image Module, C.7.6.4 Contrast/Bolus Module). They only describe
the acquisition; geometry and pixel data come from the NIfTI volumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset

# The sequences the segmentation model needs (BraTS naming).
SEQUENCES: Final[tuple[str, ...]] = ("t1", "t1c", "t2", "flair")

# Gyromagnetic ratio of 1H in MHz/T, for Imaging Frequency (0018,0084).
PROTON_GYROMAGNETIC_MHZ_PER_T: Final = 42.577478


@dataclass(frozen=True)
class Contrast:
    """The contrast agent given before a series (PS3.3 C.7.6.4)."""

    agent: str
    route: str
    volume_ml: float
    ingredient: str
    minutes_after_study_start: int


@dataclass(frozen=True)
class MRProtocol:
    """What the scanner records about one sequence (PS3.3 C.8.3.1)."""

    sequence: str
    series_number: int
    series_description: str
    protocol_name: str
    sequence_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    repetition_time_ms: float
    echo_time_ms: float
    inversion_time_ms: float | None
    echo_train_length: int
    flip_angle_deg: float
    number_of_averages: float
    pixel_bandwidth_hz: float
    minutes_after_study_start: int
    contrast: Contrast | None = None


GADOBUTROL: Final = Contrast(
    agent="Gadobutrol",
    route="IV",
    # 0.1 ml/kg of a 1.0 mmol/ml agent for a 75 kg adult.
    volume_ml=7.5,
    ingredient="GADOLINIUM",
    minutes_after_study_start=13,
)

# Series numbers follow acquisition order: pre-contrast T1, T2, FLAIR, then post-contrast T1.
PROTOCOLS: Final[dict[str, MRProtocol]] = {
    "t1": MRProtocol(
        sequence="t1",
        series_number=1,
        series_description="AX T1 SE",
        protocol_name="AX T1 SE",
        sequence_name="*se2d1",
        scanning_sequence=("SE",),
        sequence_variant=("NONE",),
        scan_options=("SP",),
        repetition_time_ms=500.0,
        echo_time_ms=10.0,
        inversion_time_ms=None,
        echo_train_length=1,
        flip_angle_deg=90.0,
        number_of_averages=2.0,
        pixel_bandwidth_hz=130.0,
        minutes_after_study_start=2,
    ),
    "t2": MRProtocol(
        sequence="t2",
        series_number=2,
        series_description="AX T2 TSE",
        protocol_name="AX T2 TSE",
        sequence_name="*tse2d1_15",
        scanning_sequence=("SE",),
        sequence_variant=("SK",),
        scan_options=("SP",),
        repetition_time_ms=4000.0,
        echo_time_ms=100.0,
        inversion_time_ms=None,
        echo_train_length=15,
        flip_angle_deg=150.0,
        number_of_averages=1.0,
        pixel_bandwidth_hz=190.0,
        minutes_after_study_start=6,
    ),
    "flair": MRProtocol(
        sequence="flair",
        series_number=3,
        series_description="AX T2 FLAIR",
        protocol_name="AX T2 FLAIR",
        sequence_name="*tir2d1_16",
        # Inversion recovery with a (turbo) spin-echo readout; both terms, multi-valued.
        scanning_sequence=("SE", "IR"),
        sequence_variant=("SK", "MP"),
        scan_options=("PFP",),
        repetition_time_ms=9000.0,
        echo_time_ms=120.0,
        inversion_time_ms=2500.0,
        echo_train_length=16,
        flip_angle_deg=150.0,
        number_of_averages=1.0,
        pixel_bandwidth_hz=220.0,
        minutes_after_study_start=9,
    ),
    "t1c": MRProtocol(
        sequence="t1c",
        series_number=4,
        series_description="AX T1 SE POST GAD",
        protocol_name="AX T1 SE POST",
        sequence_name="*se2d1",
        scanning_sequence=("SE",),
        sequence_variant=("NONE",),
        scan_options=("SP",),
        repetition_time_ms=500.0,
        echo_time_ms=10.0,
        inversion_time_ms=None,
        echo_train_length=1,
        flip_angle_deg=90.0,
        number_of_averages=2.0,
        pixel_bandwidth_hz=130.0,
        minutes_after_study_start=15,
        contrast=GADOBUTROL,
    ),
}


def add_mr_image_attributes(
    ds: Dataset,
    protocol: MRProtocol,
    *,
    rows: int,
    columns: int,
    magnetic_field_strength_t: float,
) -> None:
    """Set the acquisition attributes of the MR Image Module (PS3.3 C.8.3.1)."""
    ds.ScanningSequence = list(protocol.scanning_sequence)
    ds.SequenceVariant = list(protocol.sequence_variant)
    ds.ScanOptions = list(protocol.scan_options)
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = protocol.sequence_name
    ds.AngioFlag = "N"
    ds.RepetitionTime = protocol.repetition_time_ms
    ds.EchoTime = protocol.echo_time_ms
    # Type 2C: present exactly when Scanning Sequence includes IR (C.8.3.1.1).
    if protocol.inversion_time_ms is not None:
        ds.InversionTime = protocol.inversion_time_ms
    ds.EchoTrainLength = protocol.echo_train_length
    ds.NumberOfAverages = protocol.number_of_averages
    ds.ImagingFrequency = round(PROTON_GYROMAGNETIC_MHZ_PER_T * magnetic_field_strength_t, 6)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = magnetic_field_strength_t
    ds.NumberOfPhaseEncodingSteps = rows
    ds.PercentSampling = 100.0
    ds.PercentPhaseFieldOfView = 100.0
    ds.PixelBandwidth = protocol.pixel_bandwidth_hz
    ds.ReceiveCoilName = "HEAD"
    ds.TransmitCoilName = "BODY"
    # Frequency encoding along rows, phase encoding along columns (C.8.3.1.1.6 order:
    # frequency rows, frequency columns, phase rows, phase columns).
    ds.AcquisitionMatrix = [0, columns, rows, 0]
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.FlipAngle = protocol.flip_angle_deg
    ds.VariableFlipAngleFlag = "N"


def add_contrast_attributes(ds: Dataset, contrast: Contrast, start_time: str) -> None:
    """Set the Contrast/Bolus Module (PS3.3 C.7.6.4), required when contrast was given."""
    ds.ContrastBolusAgent = contrast.agent
    ds.ContrastBolusRoute = contrast.route
    ds.ContrastBolusVolume = contrast.volume_ml
    ds.ContrastBolusStartTime = start_time
    ds.ContrastBolusIngredient = contrast.ingredient
