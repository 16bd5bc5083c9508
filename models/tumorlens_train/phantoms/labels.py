"""Tumour types and segmentation labels shared by every phantom module.

Models use contiguous labels internally (0 background, 1 necrotic/non-enhancing core, 2 oedema,
3 enhancing). BraTS 2019/2020 files store enhancing tumour as 4, so :mod:`.writer` maps 3 -> 4 on
the way out and :func:`brats_to_internal` maps it back on the way in.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt


class TumourType(StrEnum):
    """The case classes a typing model learns; the value is the CLI/metadata spelling."""

    HEALTHY = "healthy"
    HGG = "hgg"
    LGG = "lgg"
    METASTASIS = "metastasis"
    MENINGIOMA = "meningioma"
    PITUITARY = "pituitary"


class Label(IntEnum):
    """Internal segmentation labels (what the models predict)."""

    BACKGROUND = 0
    CORE = 1  # necrotic or non-enhancing tumour core (BraTS NCR/NET)
    OEDEMA = 2  # peritumoural oedema (BraTS ED)
    ENHANCING = 3  # enhancing tumour (BraTS ET, stored as 4 in files)


BRATS_ENHANCING: Final = 4

#: Grade written to metadata; BraTS grades gliomas only.
GRADE: Final[dict[TumourType, str | None]] = {
    TumourType.HEALTHY: None,
    TumourType.HGG: "HGG",
    TumourType.LGG: "LGG",
    TumourType.METASTASIS: None,
    TumourType.MENINGIOMA: None,
    TumourType.PITUITARY: None,
}


def internal_to_brats(seg: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """Internal labels -> BraTS file labels (3 -> 4)."""
    out = seg.astype(np.uint8, copy=True)
    out[seg == Label.ENHANCING] = BRATS_ENHANCING
    return out


def brats_to_internal(seg: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """BraTS file labels -> internal labels (4 -> 3)."""
    out = seg.astype(np.uint8, copy=True)
    out[seg == BRATS_ENHANCING] = Label.ENHANCING
    return out


def parse_types(text: str) -> tuple[TumourType, ...]:
    """Parse a comma-separated type list such as ``"hgg,lgg"`` (``"all"`` means every type)."""
    if text.strip().lower() == "all":
        return tuple(TumourType)
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    try:
        return tuple(TumourType(name) for name in names)
    except ValueError as exc:
        valid = ", ".join(t.value for t in TumourType)
        raise ValueError(f"unknown tumour type in {text!r}; choose from {valid}") from exc
