"""The findings as a one-page A4 PDF, drawn with matplotlib (no DICOM here; see pdf.py).

Layout, top to bottom: patient / study header, research-use banner, findings table, three key
axial slices with the sub-region overlay and legend, the activation map over the central key
slice next to the models and sequences used, and a footer with the generation time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.patches import Patch, Rectangle
from pydicom.dataset import Dataset

from tumorlens.writers import codes
from tumorlens.writers.findings import Findings

A4_INCHES: Final = (8.27, 11.69)
OVERLAY_ALPHA: Final = 0.45
BANNER: Final = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
NOTE_CHARS: Final = 58  # what fits the notes column; the SR and result.json keep them whole
BANNER_DETAIL: Final = (
    "Generated automatically by AI models that are not a medical device. "
    "Every finding must be checked by a qualified radiologist."
)
SEQUENCE_NAMES: Final = {"t1": "T1", "t1c": "T1 post-contrast", "t2": "T2", "flair": "FLAIR"}


def key_slices(label_map: npt.NDArray[np.uint8]) -> list[int]:
    """Three axial slices through the main lesion: the one with the most tumour and the two
    slices nearest to it that show tumour too (neighbours when it shows on fewer slices);
    without tumour, at 25, 50 and 75 % of the stack."""
    area = np.count_nonzero(label_map, axis=(1, 2))
    n = label_map.shape[0]
    if not area.any():
        return sorted({n // 4, n // 2, (3 * n) // 4})
    main = int(np.argmax(area))
    # Scattered specks elsewhere in the stack should not take a key image from the lesion.
    showing = [k for k in range(n) if area[k] >= 0.1 * area[main]]
    picks = sorted(showing, key=lambda k: (abs(k - main), k))[:3]
    for k in (main - 1, main + 1, main - 2, main + 2):
        if len(picks) < min(3, n) and 0 <= k < n and k not in picks:
            picks.append(k)
    return sorted(picks)


def windowed(ds: Dataset) -> npt.NDArray[np.float64]:
    """The instance's pixels through its first VOI window (PS3.3 C.11.2.1.2), as 0..1."""
    pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    pixels = pixels * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        lo, hi = np.percentile(pixels, [0.5, 99.5])
    else:
        c = float(center[0] if isinstance(center, Sequence) else center)
        w = float(width[0] if isinstance(width, Sequence) else width)
        lo, hi = c - w / 2, c + w / 2
    scaled: npt.NDArray[np.float64] = np.clip((pixels - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return scaled


def overlay_rgba(labels: npt.NDArray[np.uint8], alpha: float = OVERLAY_ALPHA) -> npt.NDArray[Any]:
    """An RGBA image colouring each BraTS sub-region in its display colour."""
    rgba = np.zeros((*labels.shape, 4), dtype=np.float64)
    for region in codes.REGIONS:
        mask = labels == region.label
        rgba[mask, :3] = np.asarray(region.rgb, dtype=np.float64) / 255.0
        rgba[mask, 3] = alpha
    return rgba


def _rgb(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0


def pixel_aspect(ds: Dataset) -> float:
    """Row spacing / column spacing, so images are drawn in true proportions."""
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return row_spacing / column_spacing


def _date(value: object) -> str:
    text = str(value or "")
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text or "-"


def header_rows(ds: Dataset) -> list[tuple[str, str]]:
    return [
        ("Patient", str(ds.get("PatientName", "")).replace("^", " ").strip() or "-"),
        ("Patient ID", str(ds.get("PatientID", "")) or "-"),
        ("Birth date", _date(ds.get("PatientBirthDate"))),
        ("Sex", str(ds.get("PatientSex", "")) or "-"),
        ("Study date", _date(ds.get("StudyDate"))),
        ("Study", str(ds.get("StudyDescription", "")) or "-"),
        ("Accession", str(ds.get("AccessionNumber", "")) or "-"),
        ("Institution", str(ds.get("InstitutionName", "")) or "-"),
    ]


def findings_rows(findings: Findings) -> list[tuple[str, str]]:
    m = findings.measurements
    rows = [
        (f"{region.display} volume", f"{m.volumes_ml.get(region.label, 0.0):.2f} mL")
        for region in codes.REGIONS
    ]
    rows.append(("Whole tumour volume", f"{m.whole_tumour_ml:.2f} mL"))
    rows.append(("Lesion count", str(m.lesion_count)))
    rows.append(("Side", m.side.value))
    if m.centroid_lps is not None:
        x, y, z = m.centroid_lps
        rows.append(("Centroid (LPS, mm)", f"{x:.1f}, {y:.1f}, {z:.1f}"))
    grade = "HGG" if findings.grade == codes.HIGH_GRADE_GLIOMA else "LGG"
    rows.append(("Glioma grade group", f"{grade} (p = {findings.grade_probability:.2f})"))
    ranked = sorted(findings.tumour_types, key=lambda t: -t.probability)
    rows.append(("Most probable type", f"{ranked[0].display} (p = {ranked[0].probability:.2f})"))
    rows.extend((f"  p({t.display})", f"{t.probability:.2f}") for t in ranked)
    if findings.slice_types:
        opinion = sorted(findings.slice_types, key=lambda t: -t.probability)
        # The two most probable only: the row must fit the table (all are in the SR).
        rows.append(
            (
                "2D slice classifier (T1c)",
                ", ".join(f"{t.display} {t.probability:.2f}" for t in opinion[:2]),
            )
        )
    return rows


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _table(
    ax: Any, rows: list[tuple[str, str]], title: str, fontsize: float = 8.5, row_scale: float = 1.2
) -> None:
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    table = ax.table(cellText=rows, colWidths=[0.4, 0.6], loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(fontsize)
    table.scale(1.0, row_scale)
    for (row, column), cell in table.get_celld().items():
        cell.set_edgecolor("#bbbbbb")
        if column == 0:
            cell.set_facecolor("#f0f0f0")
            cell.get_text().set_fontweight("bold")
        del row


def _image(ax: Any, findings: Findings, k: int, title: str) -> None:
    ds = findings.reference_series[k]
    aspect = pixel_aspect(ds)
    ax.imshow(windowed(ds), cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="none")
    ax.imshow(overlay_rgba(findings.label_map[k]), aspect=aspect, interpolation="none")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def render_pdf(findings: Findings, generated: datetime) -> bytes:
    """The report as PDF bytes. ``generated`` is printed and stored as the creation date."""
    source = findings.reference_series[0]
    fig = plt.figure(figsize=A4_INCHES)
    grid = fig.add_gridspec(
        6,
        3,
        height_ratios=[1.25, 0.3, 2.6, 1.95, 0.12, 1.75],
        hspace=0.3,
        wspace=0.08,
        left=0.06,
        right=0.94,
        top=0.95,
        bottom=0.05,
    )
    fig.suptitle("tumorlens - AI brain tumour MRI report", fontsize=14, fontweight="bold", y=0.985)

    _table(fig.add_subplot(grid[0, :]), header_rows(source), "Patient and study")

    banner = fig.add_subplot(grid[1, :])
    banner.axis("off")
    banner.add_patch(Rectangle((0, 0), 1, 1, transform=banner.transAxes, color="#b00020", zorder=0))
    banner.text(
        0.5,
        0.64,
        BANNER,
        ha="center",
        va="center",
        color="white",
        fontsize=14,
        fontweight="bold",
        transform=banner.transAxes,
    )
    banner.text(
        0.5,
        0.22,
        BANNER_DETAIL,
        ha="center",
        va="center",
        color="white",
        fontsize=7.5,
        transform=banner.transAxes,
    )

    _table(fig.add_subplot(grid[2, :]), findings_rows(findings), "Findings", row_scale=1.1)

    slices = key_slices(findings.label_map)
    for column, k in enumerate(slices):
        ds = findings.reference_series[k]
        location = float(
            np.dot(
                [float(v) for v in ds.ImagePositionPatient],
                np.cross(
                    [float(v) for v in ds.ImageOrientationPatient[:3]],
                    [float(v) for v in ds.ImageOrientationPatient[3:]],
                ),
            )
        )
        _image(
            fig.add_subplot(grid[3, column]),
            findings,
            k,
            f"Image {ds.get('InstanceNumber', k + 1)} ({location:.1f} mm)",
        )
    legend = fig.add_subplot(grid[4, :])
    legend.axis("off")
    legend.legend(
        [Patch(facecolor=_rgb(r.rgb), alpha=0.8) for r in codes.REGIONS],
        [r.display for r in codes.REGIONS],
        loc="center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )

    central = slices[len(slices) // 2]
    cam_ax = fig.add_subplot(grid[5, 0])
    ds = findings.reference_series[central]
    cam_ax.imshow(windowed(ds), cmap="gray", aspect=pixel_aspect(ds), interpolation="none")
    if findings.activation_map is not None:
        shown = cam_ax.imshow(
            findings.activation_map[central],
            cmap="jet",
            alpha=0.45,
            vmin=0.0,
            vmax=1.0,
            aspect=pixel_aspect(ds),
        )
        fig.colorbar(shown, ax=cam_ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        cam_ax.set_title("Activation map (model attention)", fontsize=8)
    else:
        cam_ax.set_title("No activation map", fontsize=8)
    cam_ax.set_xticks([])
    cam_ax.set_yticks([])

    model_rows = [(m.label, f"{m.task}, sha256 {m.sha256[:12]}") for m in findings.models]
    used = ", ".join(SEQUENCE_NAMES.get(s, s) for s in findings.sequences_used) or "-"
    model_rows.append(("Sequences used", used))
    model_rows.append(("Reference series", str(source.get("SeriesDescription", "")) or "-"))
    model_rows.extend(("Note", _shorten(note, NOTE_CHARS)) for note in findings.notes[:4])
    _table(fig.add_subplot(grid[5, 1:]), model_rows, "Models and inputs", fontsize=7.5)

    fig.text(
        0.06,
        0.018,
        f"Generated {generated.isoformat(timespec='seconds')} by tumorlens "
        f"(study version {findings.study_version}). {BANNER}.",
        fontsize=7,
        color="#444444",
    )

    buffer = io.BytesIO()
    with PdfPages(
        buffer,
        metadata={
            "Title": "tumorlens AI brain tumour MRI report (research use only)",
            "Creator": "tumorlens",
            "CreationDate": generated,
            "ModDate": generated,
        },
    ) as pdf:
        pdf.savefig(fig)
    plt.close(fig)
    return buffer.getvalue()
