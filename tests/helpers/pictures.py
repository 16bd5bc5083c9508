"""Pictures of what a PACS holds (the PDF's first page, a SEG over its source image), so a
person can look at the results as a radiologist would. Written to ``$TUMORLENS_ARTIFACTS``
when set (else the test's temporary folder)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pydicom

from tests.helpers.orthanc import Orthanc
from tumorlens.writers import codes

COLOURS = {1: (0.9, 0.2, 0.2), 2: (0.2, 0.8, 0.3), 3: (1.0, 0.85, 0.1)}


def artifacts_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TUMORLENS_ARTIFACTS", tmp_path / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fetch_instance(orthanc: Orthanc, instance_id: str) -> pydicom.Dataset:
    return pydicom.dcmread(
        io.BytesIO(orthanc.request_bytes("GET", f"/instances/{instance_id}/file"))
    )


def reference_series(orthanc: Orthanc, study_id: str, seg: pydicom.Dataset) -> str:
    """Orthanc's ID of the series the SEG was made on."""
    uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    for series in orthanc.get(f"/studies/{study_id}/series"):
        if series["MainDicomTags"]["SeriesInstanceUID"] == uid:
            return str(series["ID"])
    raise AssertionError(f"the SEG's source series {uid} is not in Orthanc")


def render_pdf_page(pdf: bytes, out: Path) -> None:
    """Page 1 at 100 dpi with poppler's pdftoppm, when it is installed."""
    tool = shutil.which("pdftoppm")
    if tool is None:
        return
    source = out.with_suffix(".pdf")
    source.write_bytes(pdf)
    subprocess.run(
        [tool, "-png", "-r", "100", "-f", "1", "-l", "1", "-singlefile", str(source),
         str(out.with_suffix(""))],
        check=True,
        timeout=60,
    )  # fmt: skip


def _segment_of(seg: pydicom.Dataset, frame: pydicom.Dataset) -> int:
    ident = frame.get("SegmentIdentificationSequence") or seg.SharedFunctionalGroupsSequence[0].get(
        "SegmentIdentificationSequence"
    )
    return int(ident[0].ReferencedSegmentNumber)


def _label_of(seg: pydicom.Dataset, number: int) -> int:
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) == number:
            code = str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue)
            return codes.REGION_BY_TYPE_CODE[code].label
    raise AssertionError(f"segment {number} not described")


def render_seg_overlay(seg: pydicom.Dataset, sources: dict[str, pydicom.Dataset], out: Path) -> int:
    """The source image with the most segmented pixels, with each segment in its colour;
    returns how many pixels were coloured."""
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    by_source: dict[str, list[tuple[int, np.ndarray]]] = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = str(
            item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        )
        label = _label_of(seg, _segment_of(seg, item))
        by_source.setdefault(source, []).append((label, frames[index] > 0))
    uid = max(by_source, key=lambda u: sum(int(m.sum()) for _, m in by_source[u]))
    image = sources[uid].pixel_array.astype(np.float64)
    low, high = np.percentile(image, (1, 99.5))
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.stack([grey] * 3, axis=-1)
    coloured = 0
    for label, mask in by_source[uid]:
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array(COLOURS[label])
        coloured += int(mask.sum())
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(rgb, interpolation="none")
    ax.set_title(
        f"{sources[uid].get('SeriesDescription', '')} image {sources[uid].get('InstanceNumber')}"
        " + SEG from Orthanc",
        fontsize=9,
    )
    ax.axis("off")
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return coloured
