"""Synthetic multi-sequence brain-tumour MRI phantoms built on the MNI ICBM152 2009a template.

    from tumorlens_train.phantoms import PhantomConfig, generate_case, write_case
    phantom = generate_case(seed=7, tumour_type="hgg", config=PhantomConfig(spacing=2.0))
    write_case(phantom, Path("data/phantoms"), "phantom_00007")

Pipeline: :mod:`.template` (template on the working grid) -> :mod:`.anatomy` (random warp and
mass effect) -> :mod:`.tumours` (labels per tumour type) -> :mod:`.head` (skull and scalp) ->
:mod:`.contrast` (T1/T1c/T2/FLAIR signal) -> :mod:`.acquisition` (bias, thick slices, noise) ->
:mod:`.writer` (BraTS layout). :mod:`.command` is the ``tumorlens-train phantoms`` CLI.
"""

from __future__ import annotations

from .generate import GENERATOR_VERSION, Phantom, PhantomConfig, case_seed, case_type, generate_case
from .labels import Label, TumourType, brats_to_internal, internal_to_brats
from .template import DEFAULT_SPACING_MM, Grid, load_template
from .writer import read_case, write_case, write_index

__all__ = [
    "DEFAULT_SPACING_MM",
    "GENERATOR_VERSION",
    "Grid",
    "Label",
    "Phantom",
    "PhantomConfig",
    "TumourType",
    "brats_to_internal",
    "case_seed",
    "case_type",
    "generate_case",
    "internal_to_brats",
    "load_template",
    "read_case",
    "write_case",
    "write_index",
]
