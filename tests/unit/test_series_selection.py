"""Series selection over realistic headers from GE, Siemens and Philips brain protocols.

Acquisition values are those the scanners record for routine 1.5 T / 3 T brain-tumour
protocols (TR/TE/TI in ms, PS3.3 C.8.3.1); Enhanced MR headers carry them in functional
groups (C.8.13). Each study case names the series number expected per sequence and a
fragment of the reason recorded for some of the others.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from tumorlens.dicomio.mr_headers import PROTOCOLS, add_contrast_attributes, add_mr_image_attributes
from tumorlens.errors import ConfigurationError, NoUsableSeriesError
from tumorlens.pipeline.series_selection import (
    SelectionRule,
    SeriesHeader,
    Weighting,
    described_weighting,
    parse_rules,
    parse_rules_json,
    physics,
    read_facts,
    rules_to_json,
    select_series,
)

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
ORIENTATION = {
    "axial": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "coronal": [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
    "sagittal": [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
}
SIEMENS_2D = "ORIGINAL\\PRIMARY\\M\\NORM\\DIS2D"
SIEMENS_3D = "ORIGINAL\\PRIMARY\\M\\ND\\NORM"
GE_TYPE = "ORIGINAL\\PRIMARY\\OTHER"


def uid(number: int) -> str:
    return f"1.2.826.0.1.3680043.10.511.{number}"


def mr(
    number: int,
    description: str,
    *,
    tr: float | None,
    te: float | None,
    ti: float | None = None,
    scanning: str = "SE",
    variant: str = "SK\\SP\\OSP",
    options: str = "",
    acquisition: str = "2D",
    sequence_name: str = "",
    protocol: str | None = None,
    flip: float = 90.0,
    image_type: str | None = SIEMENS_2D,
    plane: str = "axial",
    thickness: float = 5.0,
    instances: int = 24,
    agent: str = "",
    modality: str = "MR",
    sop_class: str = MRImageStorage,
    **extra: Any,
) -> SeriesHeader:
    """A classic MR Image Storage header (PS3.3 C.8.3.1), one instance of the series."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.SeriesInstanceUID = uid(number)
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.ProtocolName = description if protocol is None else protocol
    if image_type is not None:
        ds.ImageType = image_type.split("\\")
    if modality == "MR":
        ds.ScanningSequence = scanning.split("\\")
        ds.SequenceVariant = variant.split("\\")
        if options:
            ds.ScanOptions = options.split("\\")
        ds.MRAcquisitionType = acquisition
        ds.SequenceName = sequence_name
        ds.AngioFlag = "N"
        if tr is not None:
            ds.RepetitionTime = tr
        if te is not None:
            ds.EchoTime = te
        if ti is not None:
            ds.InversionTime = ti
        ds.FlipAngle = flip
    ds.SliceThickness = thickness
    ds.ImageOrientationPatient = ORIENTATION[plane]
    if agent:
        ds.ContrastBolusAgent = agent
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = 7.5
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return SeriesHeader(ds, instances)


def _item(**attributes: Any) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def enhanced(
    number: int,
    description: str,
    *,
    tr: float,
    te: float,
    ti: float | None = None,
    pulse: str = "SPIN",
    contrast_kind: str = "T2",
    frame_type: str = "ORIGINAL\\PRIMARY\\VOLUME\\NONE",
    frames: int = 30,
    plane: str = "axial",
    thickness: float = 4.0,
    acquisition: str = "2D",
    flip: float = 90.0,
    agent: str = "",
    te_per_frame: bool = False,
    administered: str = "",
) -> SeriesHeader:
    """A Philips-style Enhanced MR Image Storage header (PS3.3 C.8.13), one multi-frame file."""
    ds = Dataset()
    ds.SOPClassUID = ENHANCED_MR
    ds.Modality = "MR"
    ds.SeriesInstanceUID = uid(number)
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.ImageType = frame_type.split("\\")
    ds.NumberOfFrames = frames
    ds.MRAcquisitionType = acquisition
    ds.EchoPulseSequence = pulse
    ds.PulseSequenceName = "TSE" if pulse == "SPIN" else "TFE"
    if agent:
        ds.ContrastBolusAgent = agent
    shared = Dataset()
    shared.MRImageFrameTypeSequence = DicomSequence(
        [
            _item(
                FrameType=frame_type.split("\\"),
                AcquisitionContrast=contrast_kind,
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                ComplexImageComponent="MAGNITUDE",
            )
        ]
    )
    shared.MRTimingAndRelatedParametersSequence = DicomSequence(
        [_item(RepetitionTime=tr, FlipAngle=flip, EchoTrainLength=16)]
    )
    modifier = _item(InversionRecovery="YES" if ti else "NO")
    if ti:
        modifier.InversionTimes = [ti]
    shared.MRModifierSequence = DicomSequence([modifier])
    shared.PixelMeasuresSequence = DicomSequence(
        [_item(SliceThickness=thickness, PixelSpacing=[0.5, 0.5])]
    )
    shared.PlaneOrientationSequence = DicomSequence(
        [_item(ImageOrientationPatient=ORIENTATION[plane])]
    )
    frame = Dataset()
    echo = DicomSequence([_item(EffectiveEchoTime=te)])
    if te_per_frame:
        frame.MREchoSequence = echo
    else:
        shared.MREchoSequence = echo
    if administered:
        frame.ContrastBolusUsageSequence = DicomSequence(
            [_item(ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered=administered)]
        )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([frame])
    return SeriesHeader(ds, 1)


# --- vendor protocols -----------------------------------------------------------------------
def preset(default_description: str, **defaults: Any) -> Any:
    """A vendor protocol: ``preset(n, description=..., **overrides)`` builds one header."""

    def build(n: int, description: str = default_description, **kw: Any) -> SeriesHeader:
        values = {**defaults, **kw}
        return mr(n, description, **values)

    return build


# GE Signa / Discovery MR750 (3 T): FSE with 111° refocusing, ScanOptions *_GEMS.
ge_loc = preset(
    "3-Plane Loc",
    tr=5.1,
    te=1.6,
    scanning="GR",
    variant="SS",
    flip=30.0,
    image_type="ORIGINAL\\PRIMARY\\LOCALIZER",
    instances=15,
    thickness=10.0,
    options="FAST_GEMS",
)
ge_asset = preset(
    "ASSET Cal",
    tr=150.0,
    te=1.1,
    scanning="GR",
    variant="SS",
    flip=75.0,
    image_type=GE_TYPE,
    instances=60,
    thickness=15.0,
)
ge_t1_flair = preset(
    "Ax T1 FLAIR",
    tr=2250.0,
    te=7.9,
    ti=920.0,
    scanning="SE\\IR",
    variant="SK\\SP\\MP\\OSP",
    options="FAST_GEMS\\IR_GEMS\\EDR_GEMS",
    flip=111.0,
    image_type=GE_TYPE,
)
ge_t2_fse = preset(
    "Ax T2 FSE",
    tr=5000.0,
    te=102.0,
    variant="SK\\OSP",
    options="FAST_GEMS\\EDR_GEMS\\FILTERED_GEMS",
    flip=111.0,
    image_type=GE_TYPE,
)
ge_flair = preset(
    "Ax T2 FLAIR",
    tr=9500.0,
    te=145.0,
    ti=2375.0,
    scanning="SE\\IR",
    variant="SK\\SP\\MP\\OSP",
    options="FAST_GEMS\\IR_GEMS\\EDR_GEMS",
    flip=111.0,
    image_type=GE_TYPE,
)
ge_t1_se = preset(
    "Ax T1 SE +C", tr=550.0, te=14.0, variant="NONE", options="EDR_GEMS", image_type=GE_TYPE
)
ge_bravo = preset(
    "Sag BRAVO +C",
    tr=8.2,
    te=3.2,
    ti=450.0,
    scanning="GR",
    variant="SS\\SK",
    options="FAST_GEMS\\EDR_GEMS\\ACC_GEMS\\IR_GEMS",
    acquisition="3D",
    flip=12.0,
    image_type=GE_TYPE,
    thickness=1.0,
    instances=156,
    plane="sagittal",
)
ge_fspgr = preset(
    "3D FSPGR +C",
    tr=7.6,
    te=2.7,
    scanning="GR",
    variant="SS\\SP",
    options="FAST_GEMS\\EDR_GEMS",
    acquisition="3D",
    flip=15.0,
    image_type=GE_TYPE,
    thickness=1.2,
    instances=124,
)
ge_dwi = preset(
    "Ax DWI 1000b",
    tr=7000.0,
    te=80.0,
    scanning="EP",
    variant="SK\\SS",
    options="EPI_GEMS\\ACC_GEMS",
    image_type=GE_TYPE,
    instances=48,
)
ge_adc = preset(
    "Apparent Diffusion Coefficient (mm2/s)",
    tr=7000.0,
    te=80.0,
    scanning="EP",
    variant="SK\\SS",
    image_type="DERIVED\\PRIMARY\\ADC\\ADC",
)

# Siemens Skyra / Avanto: *se2d1, *tse2d1_15, *tir2d1_16, *tfl3d1_16ns, *spcir_278ns.
sie_localizer = preset(
    "localizer",
    tr=8.6,
    te=4.0,
    scanning="GR",
    variant="SP",
    flip=20.0,
    sequence_name="*fl2d1",
    instances=3,
    thickness=7.0,
)
sie_t1_se = preset("t1_se_tra", tr=550.0, te=8.9, variant="SP\\OSP", sequence_name="*se2d1")
sie_t2_tse = preset("t2_tse_tra_512", tr=6000.0, te=99.0, flip=150.0, sequence_name="*tse2d1_15")
sie_dark_fluid = preset(
    "t2_tirm_tra_dark-fluid",
    tr=9000.0,
    te=81.0,
    ti=2500.0,
    scanning="SE\\IR",
    variant="SK\\SP\\MP\\OSP",
    flip=150.0,
    sequence_name="*tir2d1_16",
)
sie_mprage = preset(
    "t1_mprage_sag_p2_iso",
    tr=2300.0,
    te=2.98,
    ti=900.0,
    scanning="GR\\IR",
    variant="SK\\SP\\MP",
    options="IR\\PFP",
    acquisition="3D",
    flip=9.0,
    sequence_name="*tfl3d1_16ns",
    image_type=SIEMENS_3D,
    thickness=1.0,
    instances=176,
    plane="sagittal",
)
sie_space_flair = preset(
    "t2_space_dark-fluid_sag_p2_iso",
    tr=5000.0,
    te=387.0,
    ti=1800.0,
    scanning="SE\\IR",
    variant="SK\\SP\\MP",
    acquisition="3D",
    flip=120.0,
    sequence_name="*spcir_278ns",
    image_type=SIEMENS_3D,
    plane="sagittal",
    thickness=1.0,
    instances=176,
)


def sie_diffusion(n: int, suffix: str, image_type: str) -> SeriesHeader:
    return mr(
        n,
        f"ep2d_diff_3scan_trace_p2{suffix}",
        tr=4400.0,
        te=82.0,
        scanning="EP",
        variant="SK\\SP",
        sequence_name="*ep_b0_1000t",
        image_type=image_type,
        protocol="ep2d_diff_3scan_trace_p2",
        instances=25,
    )


# Philips Ingenia / Achieva: ImageType ORIGINAL\PRIMARY\M_SE\M\SE, descriptions T1W_SE...
PHILIPS_SE = "ORIGINAL\\PRIMARY\\M_SE\\M\\SE"
PHILIPS_IR = "ORIGINAL\\PRIMARY\\M_IR\\M\\IR"
PHILIPS_FFE = "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"
ph_survey = preset(
    "SURVEY",
    tr=9.9,
    te=4.6,
    scanning="GR",
    variant="SP",
    flip=15.0,
    image_type=PHILIPS_FFE,
    instances=9,
    thickness=10.0,
)
ph_refscan = preset(
    "SenseRefScan",
    tr=4.0,
    te=0.8,
    scanning="GR",
    variant="SP",
    flip=1.0,
    image_type=PHILIPS_FFE,
    instances=60,
    thickness=10.0,
)
ph_t1_se = preset("T1W_SE", tr=550.0, te=15.0, variant="SK", image_type=PHILIPS_SE)
ph_t2_tse = preset("T2W_TSE", tr=3000.0, te=80.0, variant="SK", image_type=PHILIPS_SE)
ph_flair = preset(
    "T2W_FLAIR",
    tr=11000.0,
    te=125.0,
    ti=2800.0,
    scanning="SE\\IR",
    variant="SK\\MP",
    image_type=PHILIPS_IR,
)
ph_tfe = preset(
    "sT1W_3D_TFE",
    tr=8.1,
    te=3.7,
    scanning="GR",
    variant="SP\\MP",
    acquisition="3D",
    flip=8.0,
    image_type=PHILIPS_FFE,
    thickness=1.0,
    instances=180,
    plane="sagittal",
)
ph_vista_flair = preset(
    "VISTA FLAIR",
    tr=4800.0,
    te=340.0,
    ti=1650.0,
    scanning="SE\\IR",
    variant="SK\\MP",
    acquisition="3D",
    flip=90.0,
    image_type=PHILIPS_IR,
    plane="sagittal",
    thickness=1.1,
    instances=170,
)
# Philips records an EPI diffusion as a spin echo; only the b-value and the name tell.
ph_dwi = preset(
    "DWI_SENSE",
    tr=3300.0,
    te=75.0,
    variant="SK",
    image_type=PHILIPS_SE,
    instances=48,
    DiffusionBValue=1000.0,
)


# --- study cases ----------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    series: list[SeriesHeader]
    expected: dict[str, int | None]
    reasons: dict[int, str] = field(default_factory=dict)
    rules: tuple[SelectionRule, ...] = ()


def expect(
    t1: int | None = None, t1c: int | None = None, t2: int | None = None, flair: int | None = None
) -> dict[str, int | None]:
    return {"t1": t1, "t1c": t1c, "t2": t2, "flair": flair}


CASES = [
    # ---- GE
    Case(
        "ge-routine-2d-3T",
        [
            ge_loc(1),
            ge_asset(2),
            ge_t1_flair(3),
            ge_t2_fse(4),
            ge_flair(5),
            ge_dwi(6),
            ge_adc(7),
            ge_t1_se(8, agent="MULTIHANCE"),
        ],
        expect(t1=3, t1c=8, t2=4, flair=5),
        {
            1: "localizer (ImageType LOCALIZER)",
            2: "calibration",
            6: "echo-planar",
            7: "DWI/ADC (ImageType ADC)",
        },
    ),
    Case(
        "ge-sag-t1-flair-is-t1",
        [
            ge_loc(1),
            ge_t1_flair(2, "SAG T1 FLAIR", plane="sagittal"),
            ge_t2_fse(3),
            ge_flair(4),
            ge_t1_flair(5, "Ax T1 FLAIR +C"),
        ],
        expect(t1=2, t1c=5, t2=3, flair=4),
    ),
    Case(
        "ge-bravo-post-with-reformat",
        [
            ge_t1_flair(2),
            ge_t2_fse(3),
            ge_flair(4),
            ge_bravo(7),
            ge_bravo(
                8,
                "Ax BRAVO REFORMAT",
                plane="axial",
                image_type="DERIVED\\SECONDARY\\REFORMATTED\\AVERAGE",
            ),
        ],
        expect(t1=2, t1c=7, t2=3, flair=4),
        {8: "reformat/projection/subtraction (ImageType REFORMATTED)"},
    ),
    Case(
        "ge-3d-fspgr-beats-2d-post",
        [ge_t1_se(2, "Ax T1 SE"), ge_t2_fse(3), ge_flair(4), ge_t1_se(6), ge_fspgr(7)],
        expect(t1=2, t1c=7, t2=3, flair=4),
        {6: "more slices (124 > 24)"},
    ),
    Case(
        "ge-perfusion-swan-t2star",
        [
            ge_t1_se(2, "Ax T1 SE"),
            ge_t2_fse(3),
            ge_flair(4),
            mr(
                5,
                "Ax SWAN",
                tr=40.0,
                te=25.0,
                scanning="GR",
                variant="SS\\SP",
                flip=15.0,
                acquisition="3D",
                image_type=GE_TYPE,
                thickness=2.0,
                instances=72,
            ),
            mr(
                6,
                "Ax T2* GRE",
                tr=650.0,
                te=15.0,
                scanning="GR",
                variant="SP",
                flip=20.0,
                image_type=GE_TYPE,
            ),
            mr(
                7,
                "Perfusion_Weighted",
                tr=1500.0,
                te=30.0,
                scanning="EP\\GR",
                variant="SS",
                flip=60.0,
                image_type=GE_TYPE,
                instances=1200,
                agent="GADAVIST",
                NumberOfTemporalPositions=50,
            ),
            ge_t1_se(8),
        ],
        expect(t1=2, t1c=8, t2=3, flair=4),
        {5: "SWI/T2* (description SWAN)", 6: "SWI/T2* (description T2*)", 7: "perfusion"},
    ),
    Case(
        "ge-1.5T-propeller-and-pd",
        [
            ge_t1_se(2, "Ax T1 SE", tr=500.0, te=10.0),
            ge_t2_fse(3, "Ax T2 PROPELLER", tr=6500.0, te=110.0),
            mr(4, "Ax PD FSE", tr=3000.0, te=15.0, variant="SK", image_type=GE_TYPE),
            ge_flair(5, tr=9000.0, te=140.0, ti=2200.0),
        ],
        expect(t1=2, t2=3, flair=5),
        {4: "proton density"},
    ),
    # ---- Siemens
    Case(
        "siemens-routine-2d",
        [
            sie_localizer(1),
            sie_localizer(2, "AAHead_Scout_64ch-head-coil"),
            sie_t1_se(3),
            sie_t2_tse(4),
            sie_dark_fluid(5),
            sie_diffusion(6, "", "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE\\ND\\NORM"),
            sie_diffusion(7, "_ADC", "DERIVED\\PRIMARY\\DIFFUSION\\ADC\\ND\\NORM"),
            sie_diffusion(8, "_TRACEW", "ORIGINAL\\PRIMARY\\DIFFUSION\\TRACEW\\ND\\NORM"),
            sie_t1_se(9, "t1_se_tra_KM"),
        ],
        expect(t1=3, t1c=9, t2=4, flair=5),
        {
            1: "too few slices (3)",
            2: "localizer (description AAHEAD)",
            7: "DWI/ADC (ImageType DIFFUSION\\ADC)",
            8: "TRACEW",
        },
    ),
    Case(
        "siemens-3d-mprage-space",
        [
            sie_localizer(1),
            sie_mprage(2),
            sie_t2_tse(3),
            sie_space_flair(4),
            sie_mprage(6, "MPRAGE GD", agent="Gadovist"),
            sie_mprage(
                7,
                "MPRAGE GD_MPR_tra",
                plane="axial",
                instances=160,
                image_type="DERIVED\\SECONDARY\\MPR\\CSA MPR\\CSAPARALLEL\\M\\NORM\\DIS3D",
            ),
            sie_mprage(
                8,
                "MPRAGE GD_MPR_cor",
                plane="coronal",
                instances=160,
                image_type="DERIVED\\SECONDARY\\MPR\\CSA MPR\\CSAPARALLEL\\M\\NORM\\DIS3D",
            ),
        ],
        expect(t1=2, t1c=6, t2=3, flair=4),
        {7: "ImageType MPR", 8: "derived (ImageType DERIVED)"},
    ),
    Case(
        "siemens-old-mpr-name-is-an-acquisition",
        [
            sie_mprage(2, "t1_mpr_ns_sag_p2_iso"),
            sie_t2_tse(3),
            sie_dark_fluid(4),
            sie_mprage(5, "t1_mpr_ns_sag_p2_iso_post"),
        ],
        expect(t1=2, t1c=5, t2=3, flair=4),
    ),
    Case(
        "siemens-swi-and-tof",
        [
            sie_t1_se(2),
            sie_t2_tse(3),
            sie_dark_fluid(4),
            mr(
                5,
                "Mag_Images",
                tr=28.0,
                te=20.0,
                scanning="GR",
                variant="SP",
                flip=15.0,
                acquisition="3D",
                image_type="ORIGINAL\\PRIMARY\\M\\SWI\\NORM\\DIS2D",
                thickness=1.5,
                instances=88,
                protocol="t2_swi_tra_p2_1.5mm",
            ),
            mr(
                6,
                "Pha_Images",
                tr=28.0,
                te=20.0,
                scanning="GR",
                variant="SP",
                flip=15.0,
                acquisition="3D",
                image_type="ORIGINAL\\PRIMARY\\P\\SWI\\ND",
                thickness=1.5,
                instances=88,
                protocol="t2_swi_tra_p2_1.5mm",
            ),
            mr(
                7,
                "mIP_Images(SW)",
                tr=28.0,
                te=20.0,
                scanning="GR",
                variant="SP",
                flip=15.0,
                acquisition="3D",
                image_type="DERIVED\\PRIMARY\\MNIP\\SWI\\NORM\\DIS2D",
                thickness=8.0,
                instances=11,
            ),
            mr(
                8,
                "tof_fl3d_tra_p2_multi-slab",
                tr=22.0,
                te=3.6,
                scanning="GR",
                variant="SP\\OSP",
                flip=18.0,
                acquisition="3D",
                sequence_name="*fl3d1r_t70",
                image_type=SIEMENS_3D,
                thickness=0.5,
                instances=160,
                AngioFlag="Y",
            ),
            mr(
                9,
                "tof_fl3d_tra_p2_multi-slab_MIP_SAG",
                tr=22.0,
                te=3.6,
                scanning="GR",
                variant="SP\\OSP",
                flip=18.0,
                acquisition="3D",
                image_type="DERIVED\\PRIMARY\\MIP_SAG\\ND",
                instances=21,
            ),
            sie_t1_se(10, "t1_se_tra+GD"),
        ],
        expect(t1=2, t1c=10, t2=3, flair=4),
        {
            5: "SWI",
            6: "SWI/phase (ImageType P\\SWI)",
            7: "MNIP",
            8: "AngioFlag Y",
            9: "MIP_SAG",
        },
    ),
    Case(
        "siemens-perfusion-mosaic",
        [
            sie_t1_se(2),
            sie_t2_tse(3),
            sie_dark_fluid(4),
            mr(
                5,
                "ep2d_perf_p2",
                tr=1600.0,
                te=30.0,
                scanning="EP",
                variant="SK\\SP",
                sequence_name="*epfid2d1_128",
                image_type="ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC",
                instances=60,
                agent="Gadovist",
            ),
            mr(
                6,
                "ep2d_perf_p2_MoCo",
                tr=1600.0,
                te=30.0,
                scanning="EP",
                variant="SK\\SP",
                image_type="ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC\\MOCO",
                instances=60,
            ),
            mr(
                7,
                "ep2d_perf_p2_relCBV",
                tr=1600.0,
                te=30.0,
                scanning="EP",
                variant="SK\\SP",
                image_type="DERIVED\\PRIMARY\\PERFUSION\\RCBV",
                instances=20,
            ),
            sie_t1_se(8, "t1_se_tra_post", agent="Gadovist"),
        ],
        expect(t1=2, t1c=8, t2=3, flair=4),
        {5: "perfusion", 6: "MOCO", 7: "perfusion (ImageType PERFUSION\\RCBV)"},
    ),
    Case(
        "siemens-t1-tirm-is-t1",
        [
            mr(
                2,
                "t1_tirm_tra",
                tr=2000.0,
                te=9.0,
                ti=860.0,
                scanning="SE\\IR",
                variant="SK\\SP\\MP\\OSP",
                flip=150.0,
                sequence_name="*tir2d1_7",
            ),
            sie_t2_tse(3),
            sie_dark_fluid(4),
        ],
        expect(t1=2, t2=3, flair=4),
    ),
    Case(
        "siemens-report-and-spectroscopy",
        [
            sie_t2_tse(3),
            sie_dark_fluid(4),
            mr(
                20,
                "PhoenixZIPReport",
                tr=None,
                te=None,
                image_type="ORIGINAL\\PRIMARY\\OTHER",
                sop_class=SIEMENS_CSA_NON_IMAGE,
                instances=1,
            ),
            mr(
                21,
                "svs_se_135",
                tr=2000.0,
                te=135.0,
                image_type="ORIGINAL\\PRIMARY\\SPECTROSCOPY",
                sop_class=SIEMENS_CSA_NON_IMAGE,
                instances=1,
            ),
            mr(
                22,
                "csi_se_3D_135",
                tr=1700.0,
                te=135.0,
                image_type=None,
                sop_class="1.2.840.10008.5.1.4.1.1.4.2",
                instances=1,
            ),
        ],
        expect(t2=3, flair=4),
        {
            20: "screen capture (PHOENIX)",
            21: "not an MR image (SOPClassUID 1.3.12",
            22: "spectroscopy (MR Spectroscopy Storage)",
        },
    ),
    # ---- Philips
    Case(
        "philips-routine-2d",
        [
            ph_survey(101),
            ph_refscan(201),
            ph_t1_se(301),
            ph_t2_tse(401),
            ph_flair(501),
            ph_dwi(601),
            mr(
                602,
                "dADC",
                tr=3300.0,
                te=75.0,
                variant="SK",
                image_type="DERIVED\\PRIMARY\\ADC\\ADC",
            ),
            ph_tfe(701, "3D_T1W_TFE_Gd", agent="Dotarem"),
        ],
        expect(t1=301, t1c=701, t2=401, flair=501),
        {
            101: "localizer (description SURVEY)",
            201: "calibration scan (description SENSEREF)",
            601: "DWI/ADC (DiffusionBValue 1000)",
            602: "ImageType ADC",
        },
    ),
    Case(
        "philips-3d",
        [
            ph_survey(101),
            ph_tfe(301),
            ph_t2_tse(401),
            ph_vista_flair(501),
            ph_tfe(801, "T1W_3D_TFE +C"),
        ],
        expect(t1=301, t1c=801, t2=401, flair=501),
    ),
    Case(
        "philips-enhanced-multiframe",
        [
            enhanced(
                301,
                "T1W_3D_TFE",
                tr=8.1,
                te=3.7,
                pulse="GRADIENT",
                contrast_kind="T1",
                frames=180,
                acquisition="3D",
                thickness=1.0,
                flip=8.0,
                plane="sagittal",
            ),
            enhanced(401, "T2W_TSE", tr=3000.0, te=80.0, frames=24),
            enhanced(
                501,
                "T2W_FLAIR",
                tr=11000.0,
                te=125.0,
                ti=2800.0,
                contrast_kind="FLUID_ATTENUATED",
                frames=24,
                te_per_frame=True,
            ),
            enhanced(
                801,
                "T1W_3D_TFE +C",
                tr=8.1,
                te=3.7,
                pulse="GRADIENT",
                contrast_kind="T1",
                frames=180,
                acquisition="3D",
                thickness=1.0,
                flip=8.0,
                plane="sagittal",
                agent="Gadovist",
            ),
        ],
        expect(t1=301, t1c=801, t2=401, flair=501),
    ),
    Case(
        "philips-enhanced-derived-and-localizer",
        [
            enhanced(
                101,
                "Survey",
                tr=9.9,
                te=4.6,
                pulse="GRADIENT",
                contrast_kind="T1",
                frame_type="ORIGINAL\\PRIMARY\\LOCALIZER\\NONE",
                frames=9,
            ),
            enhanced(401, "T2W_TSE", tr=3000.0, te=80.0, frames=24),
            enhanced(
                602,
                "DWI_SENSE ADC",
                tr=3300.0,
                te=75.0,
                contrast_kind="DIFFUSION",
                frame_type="DERIVED\\PRIMARY\\DIFFUSION\\ADC",
                frames=24,
            ),
            enhanced(
                701, "T1W_TSE", tr=600.0, te=10.0, contrast_kind="T1", frames=24, administered="YES"
            ),
            enhanced(
                702, "T1W_TSE", tr=600.0, te=10.0, contrast_kind="T1", frames=24, administered="NO"
            ),
        ],
        expect(t1=702, t1c=701, t2=401),
        {101: "localizer (ImageType LOCALIZER)", 602: "DWI/ADC"},
    ),
    # ---- misleading descriptions: physics wins
    Case(
        "desc-says-t2-physics-says-t1",
        [ge_t1_se(2, "Ax T2 SE", tr=450.0, te=12.0), ge_t2_fse(3, "AX FSE 2"), ge_flair(4)],
        expect(t1=2, t2=3, flair=4),
    ),
    Case(
        "desc-says-flair-physics-says-t1-flair",
        [
            mr(
                2,
                "Ax FLAIR",
                tr=2200.0,
                te=10.0,
                ti=900.0,
                scanning="SE\\IR",
                variant="SK\\MP",
                image_type=GE_TYPE,
            ),
            ge_t2_fse(3),
        ],
        expect(t1=2, t2=3),
    ),
    Case(
        "desc-says-t1-physics-says-flair",
        [ge_flair(2, "AX T1 new"), ge_t2_fse(3), ge_t1_se(4, "AX T1 SE")],
        expect(t1=4, t2=3, flair=2),
    ),
    Case(
        "desc-says-t2-physics-says-pd",
        [
            mr(2, "Ax T2", tr=2500.0, te=20.0, variant="SK", image_type=GE_TYPE),
            ge_t2_fse(3, "Ax dual echo late", te=90.0),
            mr(
                4,
                "Cor STIR",
                tr=4000.0,
                te=50.0,
                ti=160.0,
                scanning="SE\\IR",
                variant="SK\\MP",
                plane="coronal",
            ),
        ],
        expect(t2=3),
        {2: "proton density, not T1/T2/FLAIR", 4: "STIR"},
    ),
    Case(
        "post-fossa-is-anatomy-not-contrast",
        [ge_t1_se(2, "AX T1 POST FOSSA", thickness=3.0, instances=20), ge_t2_fse(3)],
        expect(t1=2, t2=3),
    ),
    Case(
        "pre-gad-wins-over-gad",
        [ge_t1_se(2, "AX T1 PRE GAD"), ge_t1_se(6, "AX T1 POST GAD"), ge_t2_fse(3)],
        expect(t1=2, t1c=6, t2=3),
    ),
    # ---- contrast
    Case(
        "pre-and-post-both-claim-t1c",
        [sie_t1_se(2, agent="Dotarem"), sie_t2_tse(3), sie_t1_se(7, agent="Dotarem")],
        expect(t1c=7, t2=3),
        {2: "later series number (7 > 2)"},
    ),
    Case(
        "agent-everywhere-but-times-tell",
        [
            sie_t1_se(
                2, agent="Dotarem", AcquisitionTime="093512", ContrastBolusStartTime="094400"
            ),
            sie_t2_tse(
                3, agent="Dotarem", AcquisitionTime="093900", ContrastBolusStartTime="094400"
            ),
            sie_t1_se(
                7, agent="Dotarem", AcquisitionTime="094630", ContrastBolusStartTime="094400"
            ),
        ],
        expect(t1=2, t1c=7, t2=3),
    ),
    Case(
        "agent-none-is-no-contrast",
        [ph_t1_se(301, agent="NONE"), ph_t2_tse(401)],
        expect(t1=301, t2=401),
    ),
    Case(
        "post-contrast-only",
        [ge_t2_fse(3), ge_flair(4), ge_t1_se(8, "Ax T1 C+")],
        expect(t1c=8, t2=3, flair=4),
    ),
    # ---- duplicates and tie-breaks
    Case(
        "t2-in-three-planes",
        [
            ge_t2_fse(3, "Cor T2 FSE", plane="coronal", instances=28),
            ge_t2_fse(4, "Sag T2 FSE", plane="sagittal", instances=26),
            ge_t2_fse(5),
        ],
        expect(t2=5),
        {3: "axial over coronal", 4: "axial over sagittal"},
    ),
    Case(
        "t2-repeats",
        [sie_t2_tse(3), sie_t2_tse(4, thickness=4.0, instances=30), sie_t2_tse(5)],
        expect(t2=4),
        {3: "more slices (30 > 24)"},
    ),
    Case(
        "t2-motion-repeat-later-wins",
        [sie_t2_tse(3), sie_t2_tse(4, "t2_tse_tra_512_rpt")],
        expect(t2=4),
        {3: "later series number (4 > 3)"},
    ),
    Case(
        "flair-original-over-untyped",
        [ge_flair(4, image_type=None), ge_flair(5, image_type=GE_TYPE)],
        expect(flair=5),
        {4: "ORIGINAL"},
    ),
    Case(
        "axial-2d-post-over-sagittal-3d-post",
        [sie_t1_se(9, "t1_se_tra_KM"), sie_mprage(10, "t1_mprage_sag_p2_iso_KM")],
        expect(t1c=9),
        {10: "axial over sagittal"},
    ),
    Case(
        "thinner-slices-win",
        [ph_t2_tse(401, thickness=5.0, instances=24), ph_t2_tse(402, thickness=3.0, instances=24)],
        expect(t2=402),
        {401: "thinner slices (3 < 5 mm)"},
    ),
    # ---- nothing or little usable
    Case(
        "too-few-slices",
        [ge_t2_fse(3, instances=3), ge_flair(4)],
        expect(flair=4),
        {3: "too few slices (3)"},
    ),
    Case(
        "screen-capture",
        [
            mr(
                99,
                "Screen Save",
                tr=None,
                te=None,
                image_type="DERIVED\\SECONDARY\\SCREEN SAVE",
                sop_class=SECONDARY_CAPTURE,
                instances=1,
                SamplesPerPixel=3,
            ),
            ge_t2_fse(3),
        ],
        expect(t2=3),
        {99: "screen capture"},
    ),
    Case(
        "anonymised-without-physics",
        [
            mr(2, "T1W_SE", tr=None, te=None),
            mr(3, "T2W_TSE", tr=None, te=None),
            mr(4, "T2W_FLAIR", tr=None, te=None),
            mr(5, "T1W_SE_GD", tr=None, te=None),
            mr(6, "Research 7", tr=None, te=None),
        ],
        expect(t1=2, t1c=5, t2=3, flair=4),
        {6: "no T1/T2/FLAIR evidence"},
    ),
    Case(
        "dce-dynamic-is-not-t1c",
        [
            ge_t2_fse(3),
            mr(
                7,
                "Ax LAVA-Flex +C multiphase",
                tr=4.0,
                te=1.7,
                scanning="GR",
                variant="SS\\SP",
                acquisition="3D",
                flip=12.0,
                image_type=GE_TYPE,
                thickness=2.0,
                instances=480,
                agent="GADAVIST",
                NumberOfTemporalPositions=6,
            ),
            ge_fspgr(8),
        ],
        expect(t1c=8, t2=3),
        {7: "dynamic (NumberOfTemporalPositions 6)"},
    ),
]

# ---- user rules
DARK_FLUID = SelectionRule(
    sequence="flair",
    match={"SeriesDescription": r"(?i)dark.?fluid"},
    ranges={"InversionTime": (1800, 3000)},
    exclude={"ImageType": r"DERIVED"},
    priority=10,
)
CASES += [
    Case(
        "rule-forces-ambiguous-flair",
        [
            sie_t2_tse(3),
            mr(
                4,
                "research_dark_fluid_short_TR",
                tr=2400.0,
                te=90.0,
                ti=2000.0,
                scanning="SE\\IR",
                variant="SK\\MP",
            ),
        ],
        expect(t2=3, flair=4),
        {4: "forced to FLAIR by series rule"},
        (DARK_FLUID,),
    ),
    Case(
        "rule-exclude-vetoes-built-in-choice",
        [sie_t2_tse(3, "t2_tse_tra_research"), sie_t2_tse(4, "t2_tse_cor", plane="coronal")],
        expect(t2=4),
        {3: "excluded by series rule"},
        (SelectionRule("exclude", match={"SeriesDescription": "(?i)research"}),),
    ),
    Case(
        "rule-forces-derived-series",
        [
            sie_t2_tse(3),
            sie_dark_fluid(
                5, "t2_tirm_tra_dark-fluid_DC", image_type="DERIVED\\PRIMARY\\M\\ND\\NORM\\DIS2D"
            ),
        ],
        expect(t2=3, flair=5),
        {5: "built-in rules would reject: derived (ImageType DERIVED)"},
        (SelectionRule("flair", match={"SeriesDescription": "_DC$"}),),
    ),
    Case(
        "rule-priority-decides",
        [sie_t1_se(8, "t1_se_tra_KM"), sie_mprage(9, "t1_mprage_sag_KM")],
        expect(t1c=9),
        {8: "series rule #1 matched, but series 9"},
        parse_rules(
            [
                {"sequence": "t1c", "match": {"SeriesDescription": "_KM$"}, "priority": 1},
                {"sequence": "t1c", "match": {"SequenceName": "tfl3d"}, "priority": 5},
            ]
        ),
    ),
    Case(
        "rule-takes-series-from-another-sequence",
        [ge_t1_se(2, "Ax T1 SE POST"), ge_t1_se(6, "Ax T1 SE POST GAD"), ge_t2_fse(3)],
        expect(t1=2, t1c=6, t2=3),
        {2: "forced to T1"},
        parse_rules([{"sequence": "t1", "match": {"SeriesNumber": "^2$"}}]),
    ),
    Case(
        "rule-on-enhanced-inversion-times",
        [
            enhanced(401, "T2W_TSE", tr=3000.0, te=80.0, frames=24),
            enhanced(
                502, "IR_research", tr=2800.0, te=100.0, ti=2200.0, contrast_kind="MIXED", frames=24
            ),
        ],
        expect(t2=401, flair=502),
        {502: "forced to FLAIR"},
        parse_rules(
            [{"sequence": "flair", "range": {"InversionTime": [1800, 2600], "EchoTime": [60, 200]}}]
        ),
    ),
    Case(
        "rule-not-match-keeps-built-in",
        [
            sie_t2_tse(3),
            sie_dark_fluid(4),
            sie_dark_fluid(5, "t2_tirm_tra_dark-fluid_MPR", image_type="DERIVED\\SECONDARY\\MPR"),
        ],
        expect(t2=3, flair=4),
        {5: "derived"},
        (DARK_FLUID,),
    ),
]


CASES += [
    Case(
        "flair-pre-preferred-over-post",
        [ge_flair(4), ge_flair(9, "Ax T2 FLAIR +C", agent="GADAVIST"), ge_t1_se(8)],
        expect(t1c=8, flair=4),
        {9: "pre-contrast preferred for FLAIR"},
    ),
    Case(
        "mp2rage-inversions-and-maps",
        [
            sie_mprage(2, "t1_mp2rage_sag_p3_INV1", ti=700.0, te=2.9, tr=5000.0),
            sie_mprage(3, "t1_mp2rage_sag_p3_INV2", ti=2500.0, te=2.9, tr=5000.0),
            sie_mprage(4, "t1_mp2rage_sag_p3_UNI_Images", image_type="DERIVED\\PRIMARY\\M\\UNI"),
            sie_mprage(5, "t1_mp2rage_sag_p3_T1_Images", image_type="DERIVED\\PRIMARY\\T1 MAP"),
            sie_t2_tse(6),
        ],
        expect(t2=6),
        {
            2: "map or inversion image (description INV1)",
            4: "derived",
            3: "INV2",
            5: "derived (ImageType DERIVED)",
        },
    ),
    Case(
        "rule-ties-first-listed-rule-wins",
        [sie_t2_tse(3, "t2_tse_tra_site"), sie_dark_fluid(4)],
        expect(t1=3, flair=4),
        {3: "forced to T1 by series rule #1"},
        (
            SelectionRule("t1", match={"SeriesDescription": "_site$"}),
            SelectionRule("t2", match={"SeriesDescription": "_site$"}),
        ),
    ),
    Case(
        "rule-takes-sequence-from-built-in-candidate",
        [sie_t2_tse(3), sie_t2_tse(4, "t2_blade_tra")],
        expect(t2=4),
        {3: "T2 taken by a series rule (series 4 't2_blade_tra')"},
        (SelectionRule("t2", match={"SeriesDescription": "blade"}),),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_study(case: Case) -> None:
    selection = select_series(case.series, case.rules)
    chosen = selection.chosen
    got = {s: chosen[s].series_number if s in chosen else None for s in case.expected}
    assert got == case.expected, [d.as_dict() for d in selection.decisions]
    # every series has a decision; chosen ones are chosen, the others say why not
    assert len(selection.decisions) == len(case.series)
    by_number = {d.series_number: d for d in selection.decisions}
    for d in selection.decisions:
        assert d.reasons, d
        assert (d.chosen_as is not None) == (d.category == "chosen")
    for number, fragment in case.reasons.items():
        text = " | ".join(by_number[number].reasons)
        assert fragment in text, (number, text)
    # one series per sequence at most, T1 and T1c different
    uids = [c.series_instance_uid for c in selection.choices]
    assert len(uids) == len(set(uids))


# --- no usable series -----------------------------------------------------------------------
def test_localizers_only_study() -> None:
    selection = select_series([sie_localizer(1), sie_localizer(2), ge_loc(3)])
    assert selection.chosen == {}
    assert selection.missing == ("t1", "t1c", "t2", "flair")
    with pytest.raises(NoUsableSeriesError, match=r"no usable MR series: 3 localizers"):
        selection.require_any()


def test_ct_study() -> None:
    ct = [
        mr(
            2,
            "Head 5mm",
            tr=None,
            te=None,
            modality="CT",
            sop_class=CT_IMAGE,
            instances=32,
            image_type="ORIGINAL\\PRIMARY\\AXIAL",
        ),
        mr(
            3,
            "Head 0.625mm bone",
            tr=None,
            te=None,
            modality="CT",
            sop_class=CT_IMAGE,
            instances=256,
            image_type="ORIGINAL\\PRIMARY\\AXIAL",
        ),
        mr(
            4,
            "Dose Report",
            tr=None,
            te=None,
            modality="CT",
            sop_class=SECONDARY_CAPTURE,
            instances=1,
            image_type="DERIVED\\SECONDARY\\SCREEN SAVE",
        ),
    ]
    selection = select_series(ct)
    assert not selection.choices
    assert all("not MR (Modality CT)" in d.reasons[0] for d in selection.decisions)
    with pytest.raises(NoUsableSeriesError, match="no usable MR series: 3 CT series"):
        selection.require_any()


def test_mixed_rejections_summary() -> None:
    selection = select_series(
        [
            ge_loc(1),
            ge_loc(2),
            ge_dwi(3),
            ge_adc(4),
            mr(5, "Head", tr=None, te=None, modality="CT", sop_class=CT_IMAGE),
        ]
    )
    with pytest.raises(NoUsableSeriesError) as raised:
        selection.require_any()
    message = str(raised.value)
    assert "2 localizers" in message
    assert "1 CT series" in message
    assert "DWI/ADC series" in message or "echo-planar series" in message


def test_empty_study() -> None:
    selection = select_series([])
    assert selection.summary() == "no series"
    with pytest.raises(NoUsableSeriesError, match="no series"):
        selection.require_any()


def test_require_names_missing_sequences() -> None:
    selection = select_series([ge_t2_fse(3), ge_flair(4)])
    selection.require_any()
    selection.require("t2", "flair")
    with pytest.raises(NoUsableSeriesError, match=r"no T1, T1c series"):
        selection.require("t1", "t1c", "t2")


def test_as_dict_is_json() -> None:
    selection = select_series([ge_loc(1), ge_t1_flair(3), ge_t2_fse(4), ge_t1_se(8)])
    data = json.loads(json.dumps(selection.as_dict()))
    assert data["chosen"]["t2"]["series_number"] == 4
    assert data["chosen"]["flair"] is None
    assert data["missing"] == ["flair"]
    localizer = next(s for s in data["series"] if s["series_number"] == 1)
    assert localizer["category"] == "localizer"
    assert localizer["chosen_as"] is None
    assert selection.decision(uid(4)).chosen_as == "t2"
    with pytest.raises(KeyError):
        selection.decision("1.2.3")


def test_min_slices_is_a_parameter() -> None:
    study = [ge_t2_fse(3, instances=12)]
    assert "t2" in select_series(study).chosen
    assert "t2" not in select_series(study, min_slices=16).chosen


# --- building blocks ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "weighting"),
    [
        (ge_t1_flair(1), Weighting.T1),
        (ge_t2_fse(1), Weighting.T2),
        (ge_flair(1), Weighting.FLAIR),
        (ge_bravo(1), Weighting.T1),
        (ge_fspgr(1), Weighting.T1),
        (sie_mprage(1), Weighting.T1),
        (sie_space_flair(1), Weighting.FLAIR),
        (ph_vista_flair(1), Weighting.FLAIR),
        (ph_tfe(1), Weighting.T1),
        (mr(1, "", tr=3000.0, te=15.0), Weighting.PD),
        # TI recorded without the IR term of Scanning Sequence
        (mr(1, "", tr=11000.0, te=125.0, ti=2800.0, scanning="SE", variant="SK"), Weighting.FLAIR),
        (mr(1, "", tr=5000.0, te=102.0, ti=0.0), Weighting.T2),
        (mr(1, "", tr=4000.0, te=50.0, ti=160.0, scanning="SE\\IR"), Weighting.STIR),
        (mr(1, "", tr=650.0, te=15.0, scanning="GR", flip=20.0), Weighting.T2_STAR),
        (mr(1, "", tr=None, te=None), Weighting.UNKNOWN),
        (mr(1, "", tr=1500.0, te=80.0), Weighting.UNKNOWN),
        (enhanced(1, "", tr=11000.0, te=125.0, ti=2800.0, te_per_frame=True), Weighting.FLAIR),
        (enhanced(1, "", tr=8.1, te=3.7, pulse="GRADIENT", flip=8.0), Weighting.T1),
    ],
)
def test_physics(header: SeriesHeader, weighting: Weighting) -> None:
    assert physics(read_facts(header)).weighting is weighting


@pytest.mark.parametrize(
    ("description", "weighting"),
    [
        ("Ax T1 FLAIR", Weighting.T1),
        ("SAG T1 FLAIR", Weighting.T1),
        ("t1_tirm_tra", Weighting.T1),
        ("AX T2 FSE", Weighting.T2),
        ("Ax T2 FLAIR", Weighting.FLAIR),
        ("t2_tirm_tra_dark-fluid", Weighting.FLAIR),
        ("t2_space_dark-fluid_sag", Weighting.FLAIR),
        ("VISTA FLAIR", Weighting.FLAIR),
        ("T2W_FLAIR", Weighting.FLAIR),
        ("t1_mprage_sag_p2_iso", Weighting.T1),
        ("BRAVO", Weighting.T1),
        ("3D FSPGR +C", Weighting.T1),
        ("sT1W_3D_TFE", Weighting.T1),
        ("T2W_TSE", Weighting.T2),
        ("Ax T2* GRE", Weighting.UNKNOWN),
        ("Ax PD FSE", Weighting.PD),
        ("Research 7", Weighting.UNKNOWN),
    ],
)
def test_described_weighting(description: str, weighting: Weighting) -> None:
    assert described_weighting(description) is weighting


@pytest.mark.parametrize(
    ("description", "post"),
    [
        ("Ax T1 SE +C", True),
        ("t1_se_tra_KM", True),
        ("t1_se_tra_post", True),
        ("t1_se_tra+GD", True),
        ("MPRAGE GD", True),
        ("3D_T1W_TFE_Gd", True),
        ("T1W_3D_TFE +C", True),
        ("AX T1 C+", True),
        ("T1 POSTCONTRAST", True),
        ("Ax T1 GADO", True),
        ("t1_mprage_sag_p2_iso", False),
        ("AX T1 POST FOSSA", False),
        ("AX T1 PRE GAD", False),
        ("T1 W/O CONTRAST", False),
        ("T1 NON-CONTRAST", False),
    ],
)
def test_contrast_from_description(description: str, post: bool) -> None:
    selection = select_series([ge_t1_se(2, description)])
    assert set(selection.chosen) == ({"t1c"} if post else {"t1"})


# --- rule parsing ---------------------------------------------------------------------------
def test_parse_rules_round_trip() -> None:
    raw: list[dict[str, Any]] = [
        {
            "sequence": "flair",
            "match": {"SeriesDescription": "(?i)dark.?fluid"},
            "not_match": {"ImageType": "DERIVED"},
            "range": {"InversionTime": [1800, 3000]},
            "priority": 10,
        },
        {"sequence": "exclude", "match": {"ProtocolName": "(?i)research"}},
    ]
    rules = parse_rules(raw)
    assert rules[0] == DARK_FLUID
    assert rules[1].sequence == "exclude"
    assert parse_rules_json(rules_to_json(rules)) == rules
    assert parse_rules_json("") == ()
    assert len({hash(r) for r in rules}) == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"sequence": "t1ce", "match": {"SeriesDescription": "x"}}], "t1ce"),
        (
            [{"sequence": "flair", "match": {"SeriesDescription": "(?i)dark(fluid"}}],
            "bad regular expression for SeriesDescription",
        ),
        (
            [{"sequence": "t2", "match": {"SeriesDescripton": "T2"}}],
            "did you mean 'SeriesDescription'",
        ),
        ([{"sequence": "flair", "range": {"InversionTime": [3000, 1800]}}], "min > max"),
        ([{"sequence": "flair", "range": {"InversionTime": [1800]}}], "[min, max]"),
        ([{"sequence": "flair", "range": {"InversionTime": ["a", "b"]}}], "[min, max]"),
        ([{"sequence": "t2", "match": {"SeriesDescription": "T2"}, "prio": 3}], "unknown key"),
        ([{"sequence": "t2"}], "needs a match or range"),
        (
            [{"sequence": "t2", "match": {"SeriesDescription": "T2"}, "priority": "high"}],
            "priority must be an integer",
        ),
        ([{"match": {"SeriesDescription": "T2"}}], "sequence is required"),
        (["t2"], "must be a table"),
        ([{"sequence": "t2", "match": "T2"}], "match must be a table"),
        ([{"sequence": "t2", "match": {"SeriesDescription": 2}}], "regular expression string"),
    ],
)
def test_bad_rules(raw: list[Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match="series rule #1") as raised:
        parse_rules(raw)
    assert message in str(raised.value)


def test_bad_rules_json() -> None:
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        parse_rules_json("[{")
    with pytest.raises(ConfigurationError, match="JSON list"):
        parse_rules_json('{"sequence": "t1"}')
    with pytest.raises(ConfigurationError, match="list of tables"):
        parse_rules("t1")  # type: ignore[arg-type]


def test_rule_constructed_directly_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="not a DICOM attribute keyword"):
        SelectionRule("t2", match={"Descr": "T2"})


@pytest.mark.parametrize(
    ("header", "sequence", "note"),
    [
        (ge_t1_se(2, "Ax T2 SE", tr=450.0, te=12.0), "t1", "description says t2"),
        (ge_flair(2, "AX T1 new"), "flair", "description says t1"),
    ],
)
def test_physics_wins_and_says_so(header: SeriesHeader, sequence: str, note: str) -> None:
    selection = select_series([header])
    assert set(selection.chosen) == {sequence}
    evidence = " | ".join(selection.decisions[0].evidence)
    assert note in evidence
    assert "physics wins" in evidence


def test_our_own_test_studies() -> None:
    """make_study's protocol headers (dicomio.mr_headers) select as the sequences they are."""
    headers = []
    for protocol in PROTOCOLS.values():
        header = mr(protocol.series_number, protocol.series_description, tr=None, te=None)
        ds = header.dataset
        add_mr_image_attributes(ds, protocol, rows=240, columns=240, magnetic_field_strength_t=3)
        minutes = protocol.minutes_after_study_start
        ds.SeriesTime = ds.AcquisitionTime = f"{9 + minutes // 60:02d}{minutes % 60:02d}00"
        if protocol.contrast is not None:
            injected = protocol.contrast.minutes_after_study_start
            add_contrast_attributes(ds, protocol.contrast, f"09{injected:02d}00")
        headers.append(SeriesHeader(ds, 155))
    chosen = select_series(headers).chosen
    assert {s: c.series_number for s, c in chosen.items()} == {
        p.sequence: p.series_number for p in PROTOCOLS.values()
    }


def test_headers_read_from_disk(tmp_path: Path) -> None:
    """Values as pydicom decodes them from a file (DS, IS, multi-valued CS, sequences)."""
    study = [
        ge_t1_flair(3),
        ge_t2_fse(4),
        enhanced(501, "T2W_FLAIR", tr=11000.0, te=125.0, ti=2800.0, te_per_frame=True),
        ge_bravo(7),
    ]
    read = []
    for index, (ds, instances) in enumerate(study):
        ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.1"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = tmp_path / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        read.append(SeriesHeader(pydicom.dcmread(path, stop_before_pixels=True), instances))
    selection = select_series(read)
    assert {s: c.series_number for s, c in selection.chosen.items()} == {
        "t1": 3,
        "t2": 4,
        "flair": 501,
        "t1c": 7,
    }
    assert selection.as_dict() == select_series(study).as_dict()


def test_rules_from_toml() -> None:
    """As a site writes them in the config file (literal strings keep regex backslashes)."""
    text = """
[tumorlens]
ae_title = "TUMORLENS"

[[tumorlens.series_rules]]
sequence = "flair"
match = { SeriesDescription = "(?i)dark.?fluid" }
not_match = { ImageType = "DERIVED" }
range = { InversionTime = [1800, 3000] }
priority = 10

[[tumorlens.series_rules]]
sequence = "exclude"
match = { ProtocolName = '(?i)research_\\d+' }
"""
    rules = parse_rules(tomllib.loads(text)["tumorlens"]["series_rules"])
    assert rules[0] == DARK_FLUID
    study = [sie_t2_tse(3, protocol="research_12"), sie_t2_tse(4, plane="coronal")]
    selection = select_series(study, rules)
    assert selection.chosen["t2"].series_number == 4
    assert selection.decision(uid(3)).category == "excluded by rule"
    assert "excluded by series rule #2" in selection.decision(uid(3)).reasons
