"""Series selection: which series of an MR study is T1, T1c, T2 and FLAIR.

Each series is judged from one representative header (PS3.3 C.8.3.1 MR Image Module, or
C.8.13 Enhanced MR Image Module with its functional groups) and its instance count:

1. exclusions: not MR, non-image SOP classes, screen captures, spectroscopy, localizers,
   derived/reformatted/projection images, diffusion, perfusion, susceptibility, angiography
   and series with too few slices;
2. weighting from the acquisition physics (Scanning Sequence, TR, TE, TI); the description
   decides only where the physics is absent or ambiguous, and is overruled where it
   contradicts the physics;
3. contrast from the Contrast/Bolus Module (C.7.6.4) or the description;
4. ranking within a sequence: score, then the expected contrast phase (pre-contrast for T1,
   T2 and FLAIR), ORIGINAL, axial, more slices, thinner slices and the later series (a
   repeat, or the post-contrast one of two T1c claims).

User rules (``[[series_rules]]`` in the configuration) come first: an ``exclude`` rule vetoes
a series for every sequence, any other rule forces a matching series to its sequence.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from pydicom.datadict import keyword_dict, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from tumorlens.dicomio.mr_headers import SEQUENCES
from tumorlens.errors import ConfigurationError, NoUsableSeriesError

# A series needs this many slices to cover a brain; localizers have 1-5 per plane.
DEFAULT_MIN_SLICES: Final = 10
EXCLUDE: Final = "exclude"
DEFAULT_RULE_NAME: Final = "series rule"
RULE_SEQUENCES: Final[tuple[str, ...]] = (*SEQUENCES, EXCLUDE)
RULE_KEYS: Final = frozenset({"sequence", "match", "not_match", "range", "priority"})
DISPLAY: Final[Mapping[str, str]] = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "FLAIR"}

# --- SOP classes (PS3.4 Annex B.5) ------------------------------------------------------------
MR_IMAGE_SOP_CLASSES: Final = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)
MR_SPECTROSCOPY_SOP_CLASS: Final = "1.2.840.10008.5.1.4.1.1.4.2"
SECONDARY_CAPTURE_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.7"
NO_AGENT: Final = frozenset({"", "NONE", "NO", "N", "N/A", "NA", "-", "0", "NIL"})


class Category(StrEnum):
    """Why a series ended where it did; the first exclusion found is the series' category."""

    CHOSEN = "chosen"
    NOT_MR = "not MR"
    NON_IMAGE = "non-image"
    SCREEN_CAPTURE = "screen capture"
    SPECTROSCOPY = "spectroscopy"
    LOCALIZER = "localizer"
    CALIBRATION = "calibration"
    DIFFUSION = "diffusion"
    PERFUSION = "perfusion"
    ECHO_PLANAR = "echo-planar"
    SUSCEPTIBILITY = "susceptibility"
    ANGIOGRAPHY = "angiography"
    DERIVED = "derived"
    TOO_FEW_SLICES = "too few slices"
    OTHER_CONTRAST = "other contrast"
    OUTRANKED = "outranked"
    USER_EXCLUDED = "excluded by rule"


# Singular and plural, for "no usable MR series: 2 localizers, 1 CT series".
_LABELS: Final[Mapping[Category, tuple[str, str]]] = {
    Category.NON_IMAGE: ("non-image series", "non-image series"),
    Category.SCREEN_CAPTURE: ("screen capture", "screen captures"),
    Category.SPECTROSCOPY: ("spectroscopy series", "spectroscopy series"),
    Category.LOCALIZER: ("localizer", "localizers"),
    Category.CALIBRATION: ("calibration scan", "calibration scans"),
    Category.DIFFUSION: ("DWI/ADC series", "DWI/ADC series"),
    Category.PERFUSION: ("perfusion series", "perfusion series"),
    Category.ECHO_PLANAR: ("echo-planar series", "echo-planar series"),
    Category.SUSCEPTIBILITY: ("SWI/T2* series", "SWI/T2* series"),
    Category.ANGIOGRAPHY: ("MR angiography series", "MR angiography series"),
    Category.DERIVED: ("derived series", "derived series"),
    Category.TOO_FEW_SLICES: ("series with too few slices", "series with too few slices"),
    Category.OTHER_CONTRAST: ("series of another contrast", "series of other contrasts"),
    Category.OUTRANKED: ("outranked series", "outranked series"),
    Category.USER_EXCLUDED: ("series excluded by rule", "series excluded by rule"),
}


class Weighting(StrEnum):
    """The contrast a series was acquired with; only T1, T2 and FLAIR are used."""

    T1 = "t1"
    T2 = "t2"
    FLAIR = "flair"
    PD = "proton density"
    STIR = "STIR"
    T2_STAR = "T2*"
    UNKNOWN = "unknown"


TARGETS: Final = frozenset({Weighting.T1, Weighting.T2, Weighting.FLAIR})


# --- keywords ---------------------------------------------------------------------------------
def _keywords(anywhere: tuple[str, ...] = (), words: tuple[str, ...] = ()) -> re.Pattern[str]:
    """A search pattern over an upper-cased description.

    ``anywhere`` fragments match inside longer words (Philips "dDWI", Siemens "SWI_Images");
    ``words`` match only between non-letters (``_``, ``-``, digits, spaces), so that "LOC"
    does not match "BLOCK" and "ADC" stays a word of its own.
    """
    parts = list(anywhere)
    if words:
        parts.append(r"(?<![A-Z])(?:" + "|".join(words) + r")(?![A-Z])")
    return re.compile("|".join(parts))


# Exclusions, searched in SeriesDescription and ProtocolName.
_SCREEN_WORDS: Final = _keywords(("SCREEN", "CAPTURE", "SNAPSHOT", "PHOENIX", "REPORT"))
_SPECTRO_WORDS: Final = _keywords(("SPECTRO",), ("SVS", "CSI", "MRS", "PRESS", "STEAM", "PROBE"))
_LOCALIZER_WORDS: Final = _keywords(
    ("LOCALI[SZ]ER", "SCOUT", "SURVEY", "AAHEAD", "TRI-?PILOT", "3[-_ ]?PL(?:ANE)?"),
    ("LOC", "PILOT"),
)
_CALIBRATION_WORDS: Final = _keywords(
    ("CALIBRATION", "REF[-_ ]?SCAN", "SENSE[-_ ]?REF", "COIL[-_ ]?SURVEY"), ("CAL",)
)
_DIFFUSION_WORDS: Final = _keywords(
    ("DIFFUSION", "DWI", "DTI", "TRACEW", "TENSOR", "RESOLVE", r"(?<![A-Z0-9])B[1-9]\d{2,3}(?!\d)"),
    ("DIFF", "ADC", "EADC", "TRACE", "EXP"),
)
_PERFUSION_WORDS: Final = _keywords(
    ("PERF",),
    ("DSC", "DCE", "P?C?ASL", "R?CBF", "R?CBV", "RELCBF", "MTT", "TTP", "TMAX", "KTRANS"),
)
_DYNAMIC_WORDS: Final = _keywords((), ("BOLD", "FMRI", "TWIST", "DISCO", "DYN", "DYNAMIC", "MOCO"))
_SUSCEPTIBILITY_WORDS: Final = _keywords(
    ("SWI", "SWAN", "SUSCEPT", "MINIP", "MNIP", "HEMO", r"T2\s*\*", "T2[-_ ]?STAR"),
    ("PHA", "PHASE"),
)
_ANGIO_WORDS: Final = _keywords(
    ("ANGIO", "INHANCE", "COLLAPSE"), ("TOF", "MRA", "MRV", "PCA", "VENO", "COW")
)
# MP2RAGE inversion images and quantitative maps: acquired, but not anatomical contrasts.
_NON_ANATOMICAL_WORDS: Final = _keywords(
    (r"T[12]\s?MAP", "RELAXOMETRY", "MAPPING"), ("INV[12]", "MAPS?", "UNI")
)
_REFORMAT_WORDS: Final = _keywords(
    ("REFORMAT", "PROJECTION"), ("MPR", "MIP", "RFMT", "CPR", "SUB", "SUBTRACT", "SUBTRACTION")
)

# Weighting as written in descriptions, in several vendors' styles. "T1 FLAIR" (GE) and
# "t1_tirm" (Siemens) are T1-weighted inversion recovery, not FLAIR.
_T1_FLAIR_WORDS: Final = _keywords(
    (r"T1(?!\d).{0,12}?(?:FLAIR|TIRM|IR(?![A-Z]))", r"FLAIR.{0,6}T1(?!\d)")
)
_FLAIR_WORDS: Final = _keywords(
    ("FLAIR", "DARK[-_ ]?FLUID", "TIRM", "FLUID[-_ ]?ATT"), ("DF", "T2F")
)
_T2_WORDS: Final = _keywords((r"T2(?![0-9*]|\s*\*|[-_ ]?STAR)",))
_T1_WORDS: Final = _keywords(
    (r"T1(?!\d)", "MP-?RAGE", "MP2RAGE", "BRAVO", "SPGR", "VIBE"), ("TFE", "TFL", "FL3D", "FLASH")
)
_PD_WORDS: Final = _keywords(("PROTON",), ("PDW?",))

# Contrast in descriptions; "pre" is tried first ("T1 PRE GAD" is pre-contrast). "POST FOSSA"
# (posterior fossa) is anatomy, not contrast; Siemens "_p2" (GRAPPA 2) is neither.
_PRE_WORDS: Final = _keywords(
    ("PRE[-_ ]?(?:CONTRAST|GAD|GD|C(?![A-Z]))", "NATIVE?", "NON[-_ ]?CON", "WITHOUT"),
    ("PRE", "W/?O", "NO[-_ ]CONTRAST"),
)
_POST_WORDS: Final = _keywords(
    ("POST[-_ ]?(?:CONTRAST|GAD|GD|C(?![A-Z]))", "CONTRAST", r"\+\s?(?:C|GD)(?![A-Z])"),
    ("POST(?![-_ ]*FOSSA)", "GAD[A-Z]*", "GD", "KM", r"C\+", "CE", "MDC"),
)

# ImageType / FrameType values (PS3.3 C.7.6.1.1.2, C.8.13.1.1.1, C.8.16.1).
_LOCALIZER_TYPES: Final = frozenset({"LOCALIZER"})
_DIFFUSION_TYPES: Final = frozenset(
    {"DIFFUSION", "ADC", "EADC", "TRACEW", "TRACE", "FA", "TENSOR", "ISODWI", "DWI"}
)
_PERFUSION_TYPES: Final = frozenset(
    {"PERFUSION", "MOCO", "RCBV", "RCBF", "CBF", "CBV", "MTT", "TTP", "PBP", "ASL", "RELCBF"}
)
_EPI_TYPES: Final = frozenset({"MOSAIC"})
_SUSCEPTIBILITY_TYPES: Final = frozenset(
    {"SWI", "MNIP", "MINIP", "MIN IP", "P", "PHASE", "PHASE MAP"}
)
_ANGIO_TYPES: Final = frozenset({"ANGIO", "COLLAPSE", "TOF", "FLOW_ENCODED"})
_REFORMAT_TYPES: Final = frozenset(
    {
        "MPR",
        "MPR THICK",
        "REFORMATTED",
        "REFORMAT",
        "PROJECTION IMAGE",
        "MIP",
        "CPR",
        "CURVED",
        "VOLUME RENDER",
        "SUBTRACTION",
        "SUBTRACT",
        "SUB",
    }
)
_SCREEN_TYPES: Final = frozenset({"SCREEN SAVE", "SCREENSHOT", "SECONDARY CAPTURE"})


# --- reading headers ------------------------------------------------------------------------
class SeriesHeader(NamedTuple):
    """One representative header of a series (e.g. its middle instance) and its size."""

    dataset: Dataset
    instances: int


def _containers(ds: Dataset) -> Iterator[Dataset]:
    """The data set, then the first item of each functional group macro (PS3.3 C.7.6.16).

    Enhanced MR keeps acquisition attributes in Shared Functional Groups, or, when they vary,
    in each frame's Per-Frame Functional Groups; the first frame speaks for the series.
    """
    yield ds
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(group_keyword)
        if not groups:
            continue
        for element in groups[0]:
            if element.VR == "SQ" and element.value:
                yield element.value[0]


def _raw(ds: Dataset, keyword: str) -> tuple[Any, ...]:
    """Values of ``keyword`` (empty when absent or empty), looked up as :func:`_containers`."""
    for container in _containers(ds):
        element = container.data_element(keyword) if keyword in container else None
        if element is None or element.value is None or isinstance(element.value, DicomSequence):
            continue
        value = element.value
        values = tuple(value) if isinstance(value, MultiValue | list | tuple) else (value,)
        values = tuple(v for v in values if v is not None and str(v).strip() != "")
        if values:
            return values
    return ()


def _texts(ds: Dataset, keyword: str) -> tuple[str, ...]:
    return tuple(str(v).strip().upper() for v in _raw(ds, keyword))


def _text(ds: Dataset, keyword: str) -> str:
    return "\\".join(str(v).strip() for v in _raw(ds, keyword))


def _numbers(ds: Dataset, keyword: str) -> tuple[float, ...]:
    numbers = []
    for value in _raw(ds, keyword):
        try:
            numbers.append(float(value))
        except (TypeError, ValueError):
            # A malformed DS/IS value says as little as an absent one.
            continue
    return tuple(numbers)


def _seconds(tm: str) -> float:
    """A TM value (HHMMSS.FFFFFF, PS3.5 6.2) as seconds since midnight."""
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", tm.strip().replace(":", ""))
    if match is None:
        raise ValueError(f"not a TM value: {tm!r}")
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(fraction or 0.0)


@dataclass(frozen=True)
class SeriesFacts:
    """What selection needs from a series' representative header, classic or enhanced."""

    series_instance_uid: str
    series_number: int
    series_description: str
    protocol_name: str
    sequence_name: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    scanning_sequence: frozenset[str]
    sequence_variant: frozenset[str]
    acquisition_type: str
    repetition_time: float | None
    echo_time: float | None
    inversion_time: float | None
    flip_angle: float | None
    contrast_agent: str
    contrast_administered: str
    acquired_before_contrast: bool
    acquisition_contrast: str
    complex_component: str
    slices: int
    slice_thickness: float
    plane: str
    temporal_positions: int
    b_value: float
    angio: bool
    samples_per_pixel: int
    secondary_capture: bool

    @property
    def words(self) -> str:
        """Description and protocol name, upper-cased, for keyword rules."""
        return f"{self.series_description} | {self.protocol_name}".upper()

    @property
    def label(self) -> str:
        return f"series {self.series_number} {self.series_description!r}"


def _plane(orientation: tuple[float, ...]) -> str:
    """Axial, coronal or sagittal from the Image Orientation (Patient) normal (C.7.6.2.1.1)."""
    if len(orientation) != 6:
        return "unknown"
    (rx, ry, rz), (cx, cy, cz) = orientation[:3], orientation[3:]
    normal = (abs(ry * cz - rz * cy), abs(rz * cx - rx * cz), abs(rx * cy - ry * cx))
    axis = max(range(3), key=lambda i: normal[i])
    return ("sagittal", "coronal", "axial")[axis]


def _scanning_sequence(ds: Dataset) -> frozenset[str]:
    """Scanning Sequence (0018,0020), or its Enhanced MR equivalents (C.8.13.4)."""
    terms = set(_texts(ds, "ScanningSequence"))
    if not terms:
        pulse = _text(ds, "EchoPulseSequence").upper()
        terms |= {"SPIN": {"SE"}, "GRADIENT": {"GR"}, "BOTH": {"SE", "GR"}}.get(pulse, set())
        if _text(ds, "EchoPlanarPulseSequence").upper() == "YES":
            terms.add("EP")
    if _text(ds, "InversionRecovery").upper() == "YES":
        terms.add("IR")
    return frozenset(terms)


def _contrast_agent(ds: Dataset) -> str:
    """Contrast/Bolus Agent (C.7.6.4), or the Enhanced Contrast/Bolus agent's code meaning."""
    agent = _text(ds, "ContrastBolusAgent")
    if agent:
        return agent
    for item in ds.get("ContrastBolusAgentSequence") or ():
        meaning = str(item.get("CodeMeaning", "")).strip()
        if meaning:
            return meaning
    return ""


def _acquired_before_contrast(ds: Dataset) -> bool:
    """Acquisition (or series) time earlier than Contrast/Bolus Start Time, same day."""
    try:
        start = _seconds(_text(ds, "ContrastBolusStartTime"))
        acquired = _seconds(_text(ds, "AcquisitionTime") or _text(ds, "SeriesTime"))
    except ValueError:
        # Absent or malformed times: the agent attribute alone decides.
        return False
    return acquired < start


def read_facts(header: SeriesHeader) -> SeriesFacts:
    """The attributes selection uses, from a classic or Enhanced MR header."""
    ds = header.dataset
    image_type = tuple(dict.fromkeys((*_texts(ds, "ImageType"), *_texts(ds, "FrameType"))))
    te = _numbers(ds, "EchoTime") or _numbers(ds, "EffectiveEchoTime")
    ti = _numbers(ds, "InversionTime") or _numbers(ds, "InversionTimes")
    tr = _numbers(ds, "RepetitionTime")
    flip = _numbers(ds, "FlipAngle")
    frames = _numbers(ds, "NumberOfFrames")
    thickness = _numbers(ds, "SliceThickness")
    numbers = _numbers(ds, "SeriesNumber")
    b_values = _numbers(ds, "DiffusionBValue")
    return SeriesFacts(
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        series_number=int(numbers[0]) if numbers else 0,
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        sequence_name=_text(ds, "SequenceName") or _text(ds, "PulseSequenceName"),
        modality=_text(ds, "Modality").upper(),
        sop_class_uid=_text(ds, "SOPClassUID"),
        image_type=image_type,
        scanning_sequence=_scanning_sequence(ds),
        sequence_variant=frozenset(_texts(ds, "SequenceVariant")),
        acquisition_type=_text(ds, "MRAcquisitionType").upper(),
        repetition_time=tr[0] if tr else None,
        echo_time=te[0] if te else None,
        inversion_time=ti[0] if ti else None,
        flip_angle=flip[0] if flip else None,
        contrast_agent=_contrast_agent(ds),
        contrast_administered=_text(ds, "ContrastBolusAgentAdministered").upper(),
        acquired_before_contrast=_acquired_before_contrast(ds),
        acquisition_contrast=_text(ds, "AcquisitionContrast").upper(),
        complex_component=_text(ds, "ComplexImageComponent").upper(),
        slices=max(header.instances, 0) * max(int(frames[0]) if frames else 1, 1),
        slice_thickness=thickness[0] if thickness else 0.0,
        plane=_plane(_numbers(ds, "ImageOrientationPatient")),
        temporal_positions=int(max(_numbers(ds, "NumberOfTemporalPositions"), default=1)),
        b_value=max(b_values, default=0.0),
        angio=_text(ds, "AngioFlag").upper() == "Y",
        samples_per_pixel=int(max(_numbers(ds, "SamplesPerPixel"), default=1)),
        secondary_capture="ConversionType" in ds,
    )


# --- exclusions -----------------------------------------------------------------------------
def _found(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    return match.group(0).strip() if match else ""


def _type_hits(image_type: tuple[str, ...], kinds: frozenset[str]) -> str:
    """Image Type values in ``kinds``; Siemens writes MIP_SAG, MIP_TRA..., hence the prefix."""
    hits = [v for v in image_type if v in kinds or v.split("_")[0] in kinds]
    return "\\".join(hits)


def exclusions(facts: SeriesFacts, min_slices: int) -> list[tuple[Category, str]]:
    """Every reason this series cannot be used, most telling first; empty when usable."""
    found: list[tuple[Category, str]] = []
    words = facts.words
    image_type = facts.image_type

    sop_class = facts.sop_class_uid
    if facts.modality != "MR":
        found.append((Category.NOT_MR, f"not MR (Modality {facts.modality or 'absent'})"))
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or facts.secondary_capture:
        found.append((Category.SCREEN_CAPTURE, "screen capture (Secondary Capture)"))
    elif facts.samples_per_pixel > 1:
        found.append((Category.SCREEN_CAPTURE, "screen capture (colour, SamplesPerPixel > 1)"))
    elif hit := _type_hits(image_type, _SCREEN_TYPES) or _found(_SCREEN_WORDS, words):
        found.append((Category.SCREEN_CAPTURE, f"screen capture ({hit})"))
    elif sop_class == MR_SPECTROSCOPY_SOP_CLASS:
        found.append((Category.SPECTROSCOPY, "spectroscopy (MR Spectroscopy Storage)"))
    elif sop_class and sop_class not in MR_IMAGE_SOP_CLASSES and facts.modality == "MR":
        # E.g. Siemens CSA Non-Image, which carries spectra and raw data with Modality MR.
        found.append((Category.NON_IMAGE, f"not an MR image (SOPClassUID {sop_class})"))
    if hit := _found(_SPECTRO_WORDS, words):
        found.append((Category.SPECTROSCOPY, f"spectroscopy (description {hit})"))

    if hit := _type_hits(image_type, _LOCALIZER_TYPES):
        found.append((Category.LOCALIZER, f"localizer (ImageType {hit})"))
    elif hit := _found(_LOCALIZER_WORDS, words):
        found.append((Category.LOCALIZER, f"localizer (description {hit})"))
    if hit := _found(_CALIBRATION_WORDS, words):
        found.append((Category.CALIBRATION, f"calibration scan (description {hit})"))

    if hit := _type_hits(image_type, _DIFFUSION_TYPES):
        found.append((Category.DIFFUSION, f"DWI/ADC (ImageType {hit})"))
    elif facts.b_value > 0:
        found.append((Category.DIFFUSION, f"DWI/ADC (DiffusionBValue {facts.b_value:g})"))
    elif facts.acquisition_contrast == "DIFFUSION":
        found.append((Category.DIFFUSION, "DWI/ADC (AcquisitionContrast DIFFUSION)"))
    elif hit := _found(_DIFFUSION_WORDS, words):
        found.append((Category.DIFFUSION, f"DWI/ADC (description {hit})"))
    if hit := _type_hits(image_type, _PERFUSION_TYPES):
        found.append((Category.PERFUSION, f"perfusion (ImageType {hit})"))
    elif facts.acquisition_contrast == "PERFUSION":
        found.append((Category.PERFUSION, "perfusion (AcquisitionContrast PERFUSION)"))
    elif hit := _found(_PERFUSION_WORDS, words):
        found.append((Category.PERFUSION, f"perfusion/DCE/ASL (description {hit})"))
    elif hit := _found(_DYNAMIC_WORDS, words):
        found.append((Category.PERFUSION, f"dynamic/functional (description {hit})"))
    elif facts.temporal_positions > 1:
        found.append(
            (Category.PERFUSION, f"dynamic (NumberOfTemporalPositions {facts.temporal_positions})")
        )
    # Echo planar: diffusion, perfusion or BOLD; never an anatomical T1/T2/FLAIR here.
    if "EP" in facts.scanning_sequence or _type_hits(image_type, _EPI_TYPES):
        found.append(
            (Category.ECHO_PLANAR, "echo-planar (ScanningSequence EP): DWI/perfusion/BOLD")
        )

    if hit := _type_hits(image_type, _SUSCEPTIBILITY_TYPES):
        found.append((Category.SUSCEPTIBILITY, f"SWI/phase (ImageType {hit})"))
    elif facts.complex_component not in ("", "MAGNITUDE", "MIXED"):
        found.append(
            (
                Category.SUSCEPTIBILITY,
                f"phase image (ComplexImageComponent {facts.complex_component})",
            )
        )
    elif hit := _found(_SUSCEPTIBILITY_WORDS, words):
        found.append((Category.SUSCEPTIBILITY, f"SWI/T2* (description {hit})"))
    if facts.angio:
        found.append((Category.ANGIOGRAPHY, "MR angiography (AngioFlag Y)"))
    elif hit := _type_hits(image_type, _ANGIO_TYPES):
        found.append((Category.ANGIOGRAPHY, f"MR angiography (ImageType {hit})"))
    elif facts.acquisition_contrast in ("TOF", "FLOW_ENCODED"):
        found.append((Category.ANGIOGRAPHY, f"MR angiography ({facts.acquisition_contrast})"))
    elif hit := _found(_ANGIO_WORDS, words):
        found.append((Category.ANGIOGRAPHY, f"MR angiography (description {hit})"))

    if hit := _found(_NON_ANATOMICAL_WORDS, words):
        found.append((Category.OTHER_CONTRAST, f"map or inversion image (description {hit})"))
    original = bool(image_type) and image_type[0] == "ORIGINAL"
    if hit := _type_hits(image_type, _REFORMAT_TYPES):
        found.append((Category.DERIVED, f"reformat/projection/subtraction (ImageType {hit})"))
    elif not original and (hit := _found(_REFORMAT_WORDS, words)):
        # Only without ORIGINAL: Siemens names a real MPRAGE acquisition "t1_mpr_sag".
        found.append((Category.DERIVED, f"reformat/projection/subtraction (description {hit})"))
    # Value 1 of Image Type (C.7.6.1.1.2): DERIVED pixels are not the acquisition's.
    if image_type and image_type[0] == "DERIVED":
        found.append((Category.DERIVED, "derived (ImageType DERIVED)"))
    if facts.slices < min_slices:
        found.append((Category.TOO_FEW_SLICES, f"too few slices ({facts.slices})"))
    return found


# --- weighting and contrast -----------------------------------------------------------------
@dataclass(frozen=True)
class Physics:
    """The weighting the acquisition parameters imply, and why."""

    weighting: Weighting
    explanation: str


def _ms(value: float | None) -> str:
    return "absent" if value is None else f"{value:g} ms"


def physics(facts: SeriesFacts) -> Physics:
    """Weighting from TR, TE, TI and the Scanning Sequence (PS3.3 C.8.3.1.1.1).

    FLAIR nulls fluid with a long TI after inversion and reads out with long TR/TE;
    T1-FLAIR and MPRAGE/BRAVO invert too, with TI ~ 400-1300 ms and a short TE; T2 is a
    long-TR, long-TE spin echo; T1 is a short-TR, short-TE spin or spoiled gradient echo.
    """
    tr, te, ti = facts.repetition_time, facts.echo_time, facts.inversion_time
    terms = facts.scanning_sequence
    stated = f"TR {_ms(tr)}, TE {_ms(te)}"
    if tr is None or te is None:
        return Physics(Weighting.UNKNOWN, f"no physics ({stated})")
    # Inversion Time is required with IR (C.8.3.1.1.1) and some scanners write it without
    # the IR term (GE BRAVO: GR with IR_GEMS); non-IR series omit it or write 0.
    inversion = "IR" in terms or (ti is not None and ti >= 50)
    if inversion:
        stated = f"IR, TI {_ms(ti)}, {stated}"
        if ti is None:
            return Physics(Weighting.UNKNOWN, f"{stated}: inversion time unknown")
        if ti < 350:
            return Physics(Weighting.STIR, f"{stated}: short-TI inversion recovery (STIR)")
        if ti >= 1200 and te >= 60 and tr >= 3000:
            return Physics(Weighting.FLAIR, f"{stated}: fluid-attenuated (FLAIR)")
        if ti < 1400 and te < 40:
            return Physics(Weighting.T1, f"{stated}: T1-weighted inversion recovery")
        return Physics(Weighting.UNKNOWN, f"{stated}: inversion recovery of unclear weighting")
    # Flip angle tells a gradient echo when Scanning Sequence is absent: spin echoes use 90°+.
    gradient = ("GR" in terms and "SE" not in terms) or (
        not terms and facts.flip_angle is not None and facts.flip_angle < 50
    )
    if gradient:
        stated = f"GR, {stated}"
        if te >= 12:
            return Physics(Weighting.T2_STAR, f"{stated}: T2*-weighted gradient echo")
        if tr < 1000:
            return Physics(Weighting.T1, f"{stated}: T1-weighted spoiled gradient echo")
        return Physics(Weighting.UNKNOWN, f"{stated}: gradient echo of unclear weighting")
    if tr >= 2000 and te >= 60:
        return Physics(Weighting.T2, f"{stated}: long TR and TE (T2)")
    if tr >= 1500 and te < 40:
        return Physics(Weighting.PD, f"{stated}: long TR, short TE (proton density)")
    if tr < 1200 and te < 30:
        return Physics(Weighting.T1, f"{stated}: short TR and TE (T1)")
    return Physics(Weighting.UNKNOWN, f"{stated}: weighting unclear")


def described_weighting(text: str) -> Weighting:
    """The weighting a description (any vendor's style) claims; T1 FLAIR is a T1."""
    words = text.upper()
    if _T1_FLAIR_WORDS.search(words):
        return Weighting.T1
    if _FLAIR_WORDS.search(words):
        return Weighting.FLAIR
    t2, t1 = bool(_T2_WORDS.search(words)), bool(_T1_WORDS.search(words))
    if t2 and not t1:
        return Weighting.T2
    if t1 and not t2:
        return Weighting.T1
    if _PD_WORDS.search(words):
        return Weighting.PD
    return Weighting.UNKNOWN


_ACQUISITION_CONTRAST: Final[Mapping[str, Weighting]] = {
    "T1": Weighting.T1,
    "T2": Weighting.T2,
    "FLUID_ATTENUATED": Weighting.FLAIR,
    "PROTON_DENSITY": Weighting.PD,
    "STIR": Weighting.STIR,
    "T2_STAR": Weighting.T2_STAR,
}


@dataclass(frozen=True)
class ContrastEvidence:
    post: bool
    explanation: str


def contrast(facts: SeriesFacts) -> ContrastEvidence:
    """Whether the series was acquired after a contrast agent (PS3.3 C.7.6.4, C.7.6.4b)."""
    pre = _found(_PRE_WORDS, facts.words)
    if pre:
        return ContrastEvidence(False, f"pre-contrast (description {pre})")
    if facts.contrast_administered == "NO":
        return ContrastEvidence(False, "pre-contrast (ContrastBolusAgentAdministered NO)")
    if facts.contrast_administered == "YES":
        return ContrastEvidence(True, "post-contrast (ContrastBolusAgentAdministered YES)")
    agent = facts.contrast_agent
    if agent.upper() not in NO_AGENT:
        # Some consoles fill the agent in for every series of the exam; the times tell.
        if facts.acquired_before_contrast:
            return ContrastEvidence(False, "pre-contrast (acquired before ContrastBolusStartTime)")
        return ContrastEvidence(True, f"post-contrast (ContrastBolusAgent {agent})")
    post = _found(_POST_WORDS, facts.words)
    if post:
        return ContrastEvidence(True, f"post-contrast (description {post})")
    return ContrastEvidence(False, "no contrast agent recorded")


# --- scoring ---------------------------------------------------------------------------------
PHYSICS_SCORE: Final = 60
DESCRIPTION_AGREES_SCORE: Final = 20
DESCRIPTION_ONLY_SCORE: Final = 30
ACQUISITION_CONTRAST_SCORE: Final = 10


@dataclass(frozen=True)
class Assessment:
    """The built-in verdict on one series."""

    facts: SeriesFacts
    sequence: str  # "t1", "t1c", "t2", "flair", or "" when not a candidate
    score: int
    weighting: Weighting
    post_contrast: bool
    evidence: tuple[str, ...]
    rejections: tuple[tuple[Category, str], ...]

    @property
    def candidate(self) -> bool:
        return bool(self.sequence) and not self.rejections


def assess(facts: SeriesFacts, min_slices: int = DEFAULT_MIN_SLICES) -> Assessment:
    """Exclusions, weighting and contrast of one series, and its score as a candidate."""
    rejections = list(exclusions(facts, min_slices))
    measured = physics(facts)
    evidence = [measured.explanation]
    described = described_weighting(facts.series_description)
    if described is Weighting.UNKNOWN:
        described = described_weighting(facts.protocol_name)
    stated = _ACQUISITION_CONTRAST.get(facts.acquisition_contrast, Weighting.UNKNOWN)

    score = 0
    weighting = measured.weighting
    if weighting is not Weighting.UNKNOWN:
        score += PHYSICS_SCORE
        if described is weighting:
            score += DESCRIPTION_AGREES_SCORE
        elif described is not Weighting.UNKNOWN:
            evidence.append(
                f"description says {described.value} but the physics says {weighting.value};"
                " physics wins"
            )
    elif stated is not Weighting.UNKNOWN:
        weighting = stated
        score += PHYSICS_SCORE
        evidence.append(f"AcquisitionContrast {facts.acquisition_contrast}")
    elif described is not Weighting.UNKNOWN:
        weighting = described
        score += DESCRIPTION_ONLY_SCORE
        evidence.append(f"weighting from the description ({described.value})")
    if stated is weighting and weighting is not Weighting.UNKNOWN:
        score += ACQUISITION_CONTRAST_SCORE

    sequence = ""
    given = contrast(facts)
    if weighting in TARGETS:
        sequence = weighting.value
        if weighting is Weighting.T1:
            sequence = "t1c" if given.post else "t1"
        if weighting is Weighting.T1 or given.post:
            evidence.append(given.explanation)
    elif not rejections:
        # An excluded series keeps its weighting in the evidence, not among the reasons.
        why = (
            "no T1/T2/FLAIR evidence"
            if weighting is Weighting.UNKNOWN
            else f"{weighting.value}, not T1/T2/FLAIR"
        )
        rejections.append((Category.OTHER_CONTRAST, f"{why} ({measured.explanation})"))
    return Assessment(
        facts, sequence, score, weighting, given.post, tuple(evidence), tuple(rejections)
    )


def _rank(a: Assessment) -> tuple[int, bool, bool, bool, int, float, int]:
    """Higher is better: score, expected contrast phase, ORIGINAL, axial, more slices, thinner
    slices, later series (a repeat after motion, or the post-contrast one of two T1c claims).
    """
    f = a.facts
    # T2 and FLAIR exist before and after contrast at some sites; the models expect pre.
    phase_as_expected = a.post_contrast == (a.sequence == "t1c")
    original = bool(f.image_type) and f.image_type[0] == "ORIGINAL"
    thickness = f.slice_thickness if f.slice_thickness > 0 else 1e6
    return (
        a.score,
        phase_as_expected,
        original,
        f.plane == "axial",
        f.slices,
        -thickness,
        f.series_number,
    )


def _why_below(loser: Assessment, winner: Assessment) -> str:
    """What decided between two candidates for the same sequence."""
    lf, wf = loser.facts, winner.facts
    if loser.score != winner.score:
        return f"score {loser.score} < {winner.score}"
    lr, wr = _rank(loser), _rank(winner)
    reasons = (
        "",
        f"pre-contrast preferred for {DISPLAY.get(loser.sequence, loser.sequence)}",
        f"ImageType ORIGINAL over {lf.image_type[0] if lf.image_type else 'no ImageType'}",
        f"axial over {lf.plane}",
        f"more slices ({wf.slices} > {lf.slices})",
        f"thinner slices ({wf.slice_thickness:g} < {lf.slice_thickness:g} mm)",
        f"later series number ({wf.series_number} > {lf.series_number})",
    )
    for index, (mine, theirs) in enumerate(zip(lr, wr, strict=True)):
        if mine != theirs:
            return reasons[index]
    return "identical rank; first listed kept"


# --- user rules ------------------------------------------------------------------------------
def _check_keyword(where: str, keyword: str) -> None:
    if tag_for_keyword(keyword) is None:
        close = difflib.get_close_matches(keyword, keyword_dict.keys(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(f"{where}: {keyword!r} is not a DICOM attribute keyword{hint}")


def _compile(where: str, keyword: str, pattern: object) -> re.Pattern[str]:
    _check_keyword(where, keyword)
    if not isinstance(pattern, str):
        raise ConfigurationError(f"{where}: {keyword} must be a regular expression string")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigurationError(
            f"{where}: bad regular expression for {keyword} {pattern!r}: {exc}"
        ) from exc


@dataclass(frozen=True)
class SelectionRule:
    """A site's rule: series matching it are forced to ``sequence``, or vetoed (``exclude``).

    A series matches when every ``match`` regex is found (``re.search``) in its attribute,
    no ``exclude`` regex is, and every ``ranges`` attribute lies within [min, max].
    Multi-valued attributes are matched as DICOM writes them, joined by ``\\``; an absent
    attribute matches no ``match`` regex and no range. Attributes are looked up in the data
    set, then in Enhanced MR functional groups; EchoTime, InversionTime, SequenceName,
    ImageType and ScanningSequence fall back to their Enhanced MR equivalents (C.8.13).
    """

    sequence: str
    match: Mapping[str, str] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    exclude: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    # Where the rule came from, for messages; not part of its meaning.
    name: str = field(default=DEFAULT_RULE_NAME, compare=False)
    _patterns: tuple[tuple[str, re.Pattern[str], bool], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        where = self.name
        if self.sequence not in RULE_SEQUENCES:
            raise ConfigurationError(
                f"{where}: sequence {self.sequence!r} is not one of {', '.join(RULE_SEQUENCES)}"
            )
        if not (self.match or self.ranges):
            raise ConfigurationError(f"{where}: needs a match or range condition")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigurationError(f"{where}: priority must be an integer")
        patterns = [(k, _compile(where, k, v), True) for k, v in self.match.items()]
        patterns += [(k, _compile(where, k, v), False) for k, v in self.exclude.items()]
        ranges: dict[str, tuple[float, float]] = {}
        for keyword, bounds in self.ranges.items():
            _check_keyword(where, keyword)
            try:
                low, high = (float(b) for b in bounds)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"{where}: range for {keyword} must be [min, max], got {bounds!r}"
                ) from exc
            if low > high:
                raise ConfigurationError(f"{where}: range for {keyword} has min > max")
            ranges[keyword] = (low, high)
        object.__setattr__(self, "match", MappingProxyType(dict(self.match)))
        object.__setattr__(self, "exclude", MappingProxyType(dict(self.exclude)))
        object.__setattr__(self, "ranges", MappingProxyType(ranges))
        object.__setattr__(self, "_patterns", tuple(patterns))

    def __hash__(self) -> int:
        return hash(json.dumps(self.as_raw(), sort_keys=True))

    def matches(self, header: Dataset) -> bool:
        for keyword, pattern, wanted in self._patterns:
            found = pattern.search(_rule_text(header, keyword)) is not None
            if found != wanted:
                return False
        for keyword, (low, high) in self.ranges.items():
            if not any(low <= v <= high for v in _rule_numbers(header, keyword)):
                return False
        return True

    def as_raw(self) -> dict[str, Any]:
        """The ``[[series_rules]]`` table this rule was parsed from (see :func:`parse_rules`)."""
        raw: dict[str, Any] = {"sequence": self.sequence, "priority": self.priority}
        if self.match:
            raw["match"] = dict(self.match)
        if self.exclude:
            raw["not_match"] = dict(self.exclude)
        if self.ranges:
            raw["range"] = {k: [low, high] for k, (low, high) in self.ranges.items()}
        return raw


# Enhanced MR moves or renames these (C.8.13.5); rules use the classic keyword.
_RULE_FALLBACKS: Final[Mapping[str, tuple[str, ...]]] = {
    "EchoTime": ("EffectiveEchoTime",),
    "InversionTime": ("InversionTimes",),
    "SequenceName": ("PulseSequenceName",),
    "ImageType": ("FrameType",),
}


def _rule_values(header: Dataset, keyword: str) -> tuple[Any, ...]:
    for name in (keyword, *_RULE_FALLBACKS.get(keyword, ())):
        values = _raw(header, name)
        if values:
            return values
    if keyword == "ScanningSequence":
        return tuple(sorted(_scanning_sequence(header)))
    return ()


def _rule_text(header: Dataset, keyword: str) -> str:
    return "\\".join(str(v).strip() for v in _rule_values(header, keyword))


def _rule_numbers(header: Dataset, keyword: str) -> tuple[float, ...]:
    numbers = []
    for value in _rule_values(header, keyword):
        try:
            numbers.append(float(value))
        except (TypeError, ValueError):
            # Text attributes have no numeric range; the condition simply fails.
            continue
    return tuple(numbers)


def _mapping(where: str, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where}: {key} must be a table of attribute = value")
    return value


def parse_rules(raw: Iterable[Mapping[str, Any]]) -> tuple[SelectionRule, ...]:
    """Rules from ``[[series_rules]]`` tables (in TOML, ``[[tumorlens.series_rules]]`` when
    the file has a ``[tumorlens]`` section)::

        [[series_rules]]
        sequence = "flair"                       # t1, t1c, t2, flair, or exclude (veto)
        match = { SeriesDescription = "(?i)dark.?fluid" }
        not_match = { ImageType = "DERIVED" }
        range = { InversionTime = [1800, 3000] }
        priority = 10                            # highest wins; default 0

    Raises :class:`ConfigurationError` naming the rule (``series rule #2``) and the fault.
    """
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        raise ConfigurationError("series_rules must be a list of tables")
    rules = []
    for index, table in enumerate(raw, start=1):
        where = f"series rule #{index}"
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{where}: must be a table, got {table!r}")
        unknown = set(table) - RULE_KEYS
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))};"
                f" expected {', '.join(sorted(RULE_KEYS))}"
            )
        if "sequence" not in table:
            raise ConfigurationError(f"{where}: sequence is required")
        ranges = _mapping(where, table, "range")
        for keyword, bounds in ranges.items():
            if not isinstance(bounds, list | tuple) or len(bounds) != 2:
                raise ConfigurationError(
                    f"{where}: range for {keyword} must be [min, max], got {bounds!r}"
                )
        rules.append(
            SelectionRule(
                sequence=str(table["sequence"]),
                match=dict(_mapping(where, table, "match")),
                exclude=dict(_mapping(where, table, "not_match")),
                ranges={k: (v[0], v[1]) for k, v in ranges.items()},
                priority=table.get("priority", 0),
                name=where,
            )
        )
    return tuple(rules)


def parse_rules_json(text: str) -> tuple[SelectionRule, ...]:
    """Rules from JSON (the ``TUMORLENS_SERIES_RULES`` environment variable)."""
    if not text.strip():
        return ()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"series_rules is not valid JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise ConfigurationError("series_rules must be a JSON list of objects")
    return parse_rules(raw)


def rules_to_json(rules: Iterable[SelectionRule]) -> str:
    """The inverse of :func:`parse_rules_json`, for a child process's environment."""
    return json.dumps([rule.as_raw() for rule in rules])


# --- the result ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChosenSeries:
    sequence: str
    series_instance_uid: str
    series_number: int
    series_description: str
    score: int
    source: str  # "built-in" or the user rule that forced it

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SeriesDecision:
    """What happened to one series, and why."""

    series_instance_uid: str
    series_number: int
    series_description: str
    modality: str
    slices: int
    plane: str
    weighting: str
    chosen_as: str | None
    category: Category
    reasons: tuple[str, ...]
    evidence: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "series_description": self.series_description,
            "modality": self.modality,
            "slices": self.slices,
            "plane": self.plane,
            "weighting": self.weighting,
            "chosen_as": self.chosen_as,
            "category": self.category.value,
            "reasons": list(self.reasons),
            "evidence": list(self.evidence),
        }


@dataclass(frozen=True)
class SeriesSelection:
    """The series chosen per sequence, and a decision for every series of the study."""

    choices: tuple[ChosenSeries, ...]
    decisions: tuple[SeriesDecision, ...]

    @property
    def chosen(self) -> dict[str, ChosenSeries]:
        """Chosen series by sequence (t1, t1c, t2, flair); absent sequences have no key."""
        return {c.sequence: c for c in self.choices}

    @property
    def missing(self) -> tuple[str, ...]:
        chosen = self.chosen
        return tuple(s for s in SEQUENCES if s not in chosen)

    def decision(self, series_instance_uid: str) -> SeriesDecision:
        for d in self.decisions:
            if d.series_instance_uid == series_instance_uid:
                return d
        raise KeyError(series_instance_uid)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable, for the job store."""
        chosen = self.chosen
        return {
            "chosen": {s: chosen[s].as_dict() if s in chosen else None for s in SEQUENCES},
            "missing": list(self.missing),
            "series": [d.as_dict() for d in self.decisions],
        }

    def summary(self) -> str:
        """What the study held, e.g. ``2 localizers, 1 CT series``."""
        counts: Counter[tuple[str, str]] = Counter()
        for d in self.decisions:
            if d.category is Category.NOT_MR:
                label = f"{d.modality or 'unknown-modality'} series"
                counts[(label, label)] += 1
            else:
                counts[_LABELS.get(d.category, (f"{d.category} series",) * 2)] += 1
        parts = [
            f"{n} {singular if n == 1 else plural}"
            for (singular, plural), n in counts.most_common()
        ]
        return ", ".join(parts) or "no series"

    def require_any(self) -> None:
        """Raise :class:`NoUsableSeriesError` when no sequence could be chosen."""
        if not self.choices:
            raise NoUsableSeriesError(f"no usable MR series: {self.summary()}")

    def require(self, *sequences: str) -> None:
        """Raise :class:`NoUsableSeriesError` when any of ``sequences`` is missing."""
        missing = [s for s in sequences if s not in self.chosen]
        if missing:
            names = ", ".join(DISPLAY.get(s, s) for s in missing)
            raise NoUsableSeriesError(f"no {names} series in the study: {self.summary()}")


# --- selection -------------------------------------------------------------------------------
@dataclass
class _Verdict:
    """Mutable bookkeeping while selecting; frozen into a SeriesDecision at the end."""

    assessment: Assessment
    header: Dataset
    chosen_as: str | None = None
    vetoed: bool = False
    reasons: list[str] = field(default_factory=list)
    rule: SelectionRule | None = None

    @property
    def forced_rank(self) -> tuple[int, tuple[int, bool, bool, bool, int, float, int]]:
        return (self.rule.priority if self.rule else 0, _rank(self.assessment))

    @property
    def label(self) -> str:
        return self.assessment.facts.label


def _apply_rules(verdicts: list[_Verdict], rules: tuple[SelectionRule, ...]) -> None:
    """``exclude`` rules veto; otherwise a series follows its highest-priority matching rule
    (the first listed among equals)."""
    for v in verdicts:
        matching = [r for r in rules if r.matches(v.header)]
        vetoes = [r for r in matching if r.sequence == EXCLUDE]
        if vetoes:
            v.vetoed = True
            v.reasons.append(f"excluded by {vetoes[0].name}")
            v.reasons += [f"built-in: {why}" for _, why in v.assessment.rejections]
        elif matching:
            v.rule = max(matching, key=lambda r: r.priority)


def _choose(verdicts: list[_Verdict]) -> dict[str, _Verdict]:
    """Per sequence: the best series forced by a rule, else the best built-in candidate."""
    taken: dict[str, _Verdict] = {}
    for sequence in SEQUENCES:
        name = DISPLAY[sequence]
        forced = [v for v in verdicts if v.rule is not None and v.rule.sequence == sequence]
        candidates = [
            v
            for v in verdicts
            if v.rule is None
            and not v.vetoed
            and v.assessment.candidate
            and v.assessment.sequence == sequence
        ]
        if forced:
            holder = max(forced, key=lambda v: v.forced_rank)
            for v in forced:
                if v is not holder and v.rule is not None:
                    v.reasons.append(f"{v.rule.name} matched, but {holder.label} won {name}")
            for v in candidates:
                v.reasons.append(f"{name} taken by a series rule ({holder.label})")
        elif candidates:
            holder = max(candidates, key=lambda v: _rank(v.assessment))
            for v in candidates:
                if v is not holder:
                    why = _why_below(v.assessment, holder.assessment)
                    v.reasons.append(f"lower rank than {holder.label} for {name}: {why}")
        else:
            continue
        holder.chosen_as = sequence
        taken[sequence] = holder
    return taken


def _chosen(sequence: str, v: _Verdict) -> ChosenSeries:
    a = v.assessment
    if v.rule is not None:
        source = f"{v.rule.name} (priority {v.rule.priority})"
        v.reasons.append(f"forced to {DISPLAY[sequence]} by {source}")
        v.reasons += [f"built-in rules would reject: {why}" for _, why in a.rejections]
    else:
        source = "built-in"
        v.reasons.append(f"chosen as {DISPLAY[sequence]} (score {a.score})")
    return ChosenSeries(
        sequence=sequence,
        series_instance_uid=a.facts.series_instance_uid,
        series_number=a.facts.series_number,
        series_description=a.facts.series_description,
        score=a.score,
        source=source,
    )


def _decision(v: _Verdict) -> SeriesDecision:
    a = v.assessment
    if v.chosen_as is not None:
        category, reasons = Category.CHOSEN, v.reasons
    elif v.vetoed:
        category, reasons = Category.USER_EXCLUDED, v.reasons
    elif v.reasons or not a.rejections:  # lost to another series, by rule or by rank
        category, reasons = Category.OUTRANKED, v.reasons
    else:
        category, reasons = a.rejections[0][0], [why for _, why in a.rejections]
    return SeriesDecision(
        series_instance_uid=a.facts.series_instance_uid,
        series_number=a.facts.series_number,
        series_description=a.facts.series_description,
        modality=a.facts.modality,
        slices=a.facts.slices,
        plane=a.facts.plane,
        weighting=a.sequence or a.weighting.value,
        chosen_as=v.chosen_as,
        category=category,
        reasons=tuple(reasons),
        evidence=a.evidence,
    )


def select_series(
    headers: Iterable[SeriesHeader | tuple[Dataset, int]],
    rules: Iterable[SelectionRule] = (),
    *,
    min_slices: int = DEFAULT_MIN_SLICES,
) -> SeriesSelection:
    """Choose the T1, T1c, T2 and FLAIR series of a study, one representative header each.

    A series is chosen for at most one sequence. User rules win over the built-in ones: the
    highest-priority rule forcing a sequence takes it, even for a series the built-in rules
    would reject, with ties going to the built-in ranking; ``exclude`` rules win over both.
    """
    # Rules built in code rather than parsed are named by their place, for the messages.
    named = tuple(
        r if r.name != DEFAULT_RULE_NAME else dataclasses.replace(r, name=f"series rule #{i}")
        for i, r in enumerate(rules, start=1)
    )
    verdicts = []
    for header in headers:
        series = SeriesHeader(*header)
        verdicts.append(_Verdict(assess(read_facts(series), min_slices), series.dataset))
    _apply_rules(verdicts, named)
    taken = _choose(verdicts)
    choices = tuple(_chosen(s, taken[s]) for s in SEQUENCES if s in taken)
    return SeriesSelection(choices=choices, decisions=tuple(_decision(v) for v in verdicts))
