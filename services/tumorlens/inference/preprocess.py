"""Slice preprocessing for the 2D models: the one definition used by training and runtime.

``tumorlens_train`` imports these functions instead of re-implementing them, so a slice seen by
the service is prepared bit for bit like the slices the model learnt from.

Recipe: decode -> one grey channel (RGB by ITU-R 601-2 luma, as PIL's ``convert("L")``) ->
centre-pad to a square with the image minimum -> bilinear (antialiased) resize to ``size`` ->
per-image z-score. Training augments between :func:`to_grid` and :func:`normalise`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from tumorlens.errors import SliceImageError

# PIL modes holding one grey channel; anything else but RGB is refused rather than guessed at.
GREY_MODES: Final = frozenset({"L", "I", "I;16", "I;16B", "I;16L", "F"})
RGB_MODE: Final = "RGB"
_EPS: Final = 1e-6

FloatImage = NDArray[np.float32]


def open_slice(path: Path) -> Image.Image:
    """Decode ``path`` as a single-channel float image (PIL mode ``F``).

    Raises :class:`SliceImageError` naming the file when it is undecodable or has a channel
    count other than 1 (grey) or 3 (RGB).
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now so truncated files fail here, not later
            return to_grey(image, name=str(path))
    except SliceImageError:
        raise
    # PIL signals broken files with any of these, depending on the codec.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SliceImageError(str(path), f"cannot decode image: {exc}") from exc


def to_grey(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` as one float channel; RGB is reduced by luma, other channel counts refused."""
    if image.mode == RGB_MODE:
        image = image.convert("L")
    elif image.mode not in GREY_MODES:
        bands = len(image.getbands())
        raise SliceImageError(
            name, f"{bands} channel(s) (mode {image.mode}); expected 1 (grey) or 3 (RGB)"
        )
    return image.convert("F")


def to_grid(image: Image.Image, size: int) -> FloatImage:
    """Centre-pad a mode-``F`` image to a square, then resize to ``size`` x ``size``.

    Padding (not cropping or stretching) keeps anatomy proportions for non-square slices; the
    image minimum is the pad value so padding looks like background.
    """
    if image.mode != "F":
        raise ValueError(f"to_grid needs a mode F image, got {image.mode}")
    width, height = image.size
    side = max(width, height)
    if width != height:
        low = float(np.asarray(image, dtype=np.float32).min())
        square = Image.new("F", (side, side), low)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if side != size:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32).copy()


def normalise(grid: FloatImage) -> FloatImage:
    """Per-image z-score, so scanner gain and JPEG window do not matter."""
    mean = float(grid.mean())
    std = float(grid.std())
    out = (grid - mean) / std if std > _EPS else grid - mean
    return out.astype(np.float32, copy=False)


def preprocess_image(image: Image.Image, size: int, name: str = "image") -> FloatImage:
    """A decoded PIL image -> the ``[1, size, size]`` float32 model input."""
    return normalise(to_grid(to_grey(image, name=name), size))[np.newaxis]


def preprocess_file(path: Path, size: int) -> FloatImage:
    """An image file -> the ``[1, size, size]`` float32 model input."""
    return normalise(to_grid(open_slice(path), size))[np.newaxis]
