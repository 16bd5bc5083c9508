"""Export the MNI ICBM152 2009a template T1 and brain mask for the runtime to ship.

The runtime must not import nilearn (a training-only dependency), so the brain-extraction step
(``tumorlens.pipeline.brain_mask``) reads two small files from the models directory instead:

* ``mni_icbm152_2009a_t1_2mm.nii.gz``: the (skull-stripped) template T1, uint8 0..255;
* ``mni_icbm152_2009a_brainmask_2mm.nii.gz``: its brain mask (brain + CSF), uint8 0/1;

both on the phantoms' 2 mm working grid (96 x 112 x 96, centred on MNI (0, -18, 10)), plus the
template's licence notice. Run ``python -m tumorlens_train.template_export [OUT_DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from tumorlens_train.phantoms.template import Grid, _load_1mm, _resample

SPACING_MM: Final = 2.0
T1_FILE: Final = "mni_icbm152_2009a_t1_2mm.nii.gz"
MASK_FILE: Final = "mni_icbm152_2009a_brainmask_2mm.nii.gz"
LICENSE_FILE: Final = "mni_icbm152_2009a.LICENSE.txt"

LICENSE_TEXT: Final = """\
MNI ICBM152 non-linear symmetric 2009a template
(files mni_icbm152_2009a_t1_2mm.nii.gz and mni_icbm152_2009a_brainmask_2mm.nii.gz, resampled to
2 mm from the copy distributed with nilearn; the brain mask is the template's non-zero T1 with
holes filled)

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University.

Permission to use, copy, modify, and distribute this software and its documentation for any
purpose and without fee is hereby granted, provided that the above copyright notice appear in
all copies. The authors and McGill University make no representations about the suitability
of this software for any purpose. It is provided "as is" without express or implied warranty.
The authors are not responsible for any data loss, equipment damage, property loss, or injury
to subjects or patients resulting from the use or misuse of this software package.

Attribution: please cite
  V.S. Fonov, A.C. Evans, R.C. McKinstry, C.R. Almli, D.L. Collins. Unbiased nonlinear average
  age-appropriate brain templates from birth to adulthood. NeuroImage 47, Supplement 1 (2009)
  S102. Organization for Human Brain Mapping 2009 Annual Meeting.
  V.S. Fonov, A.C. Evans, K. Botteron, C.R. Almli, R.C. McKinstry, D.L. Collins and BDCG.
  Unbiased average age-appropriate atlases for pediatric studies. NeuroImage 54(1) (2011)
  313-327. doi:10.1016/j.neuroimage.2010.07.033
"""


def template_images(
    spacing: float = SPACING_MM,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The template T1 (uint8) and brain mask (uint8 0/1) on the working grid."""
    grid = Grid.for_spacing(spacing)
    t1_1mm, affine = _load_1mm("t1")
    mask_1mm = ndi.binary_fill_holes(t1_1mm > 0).astype(np.float32)
    t1 = _resample(t1_1mm, grid, affine)
    # Same construction as the phantoms' template: resampled fraction > 0.5, holes filled.
    mask = ndi.binary_fill_holes(_resample(mask_1mm, grid, affine) > 0.5)
    t1_u8 = np.clip(np.rint(np.where(mask, t1, 0.0)), 0, 255).astype(np.uint8)
    images = []
    for data in (t1_u8, mask.astype(np.uint8)):
        image = nib.Nifti1Image(data, grid.affine)
        image.header.set_xyzt_units("mm")
        image.set_sform(grid.affine, code=4)  # 4 = MNI 152
        image.set_qform(grid.affine, code=4)
        images.append(image)
    return images[0], images[1]


def export_template(out_dir: Path, spacing: float = SPACING_MM) -> list[Path]:
    """Write the template T1, brain mask and licence notice into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t1, mask = template_images(spacing)
    paths = [out_dir / T1_FILE, out_dir / MASK_FILE, out_dir / LICENSE_FILE]
    nib.save(t1, str(paths[0]))
    nib.save(mask, str(paths[1]))
    paths[2].write_text(LICENSE_TEXT)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "tumorlens_zoo"
    for path in export_template(out):
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
