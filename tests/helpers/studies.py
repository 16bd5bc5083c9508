"""Realistic MR studies for tests that run the whole analysis (not just the listener)."""

from __future__ import annotations

from pathlib import Path

from tumorlens.dicomio.make_study import WrittenStudy, make_study

SEQUENCES = ("t1", "t1c", "t2", "flair")


def tcga_study(case: Path, out_dir: Path, seed: int = 6692) -> WrittenStudy:
    """TCGA-FG-6692 (4 x 26 axial slices, 5.5 mm) as DICOM; ``seed`` fixes the UIDs."""
    volumes = {s: case / f"{s}.nii.gz" for s in SEQUENCES}
    return make_study(
        volumes,
        out_dir,
        patient_name="TCGA^FG6692",
        patient_id="TCGA-FG-6692",
        study_description="MRI BRAIN WITH AND WITHOUT CONTRAST",
        seed=seed,
    )
