"""Coded concepts shared by the SEG, SR, PDF and SC writers: one table, one place to review.

Tumour sub-regions (BraTS internal labels) and the SNOMED CT concepts that encode them as the
Segmented Property Category / Type of a segment (PS3.3 C.8.20.2, CID 7150 / CID 7151) and as
the Finding Type of a TID 1411 measurement group (PS3.16):

=====  =======================  =============================  ==============================
Label  Sub-region (BraTS)       Property category (CID 7150)   Property type (CID 7151/7159)
=====  =======================  =============================  ==============================
1      necrotic / non-enhancing SCT 49755003 "Morphologically  SCT 6574001 "Necrosis"
       tumour core (NCR/NET)    Abnormal Structure"
2      peritumoural oedema (ED) SCT 49755003                   SCT 79654002 "Edema"
3      enhancing tumour (ET)    SCT 49755003                   SCT 108369006 "Neoplasm"
=====  =======================  =============================  ==============================

Notes on the choices:

* "Necrosis" covers only the necrotic part of label 1; SNOMED CT has no single concept for
  "non-enhancing solid tumour", and CID 7159 (Lesion Segmentation Types) offers Necrosis.
* "Edema" (not 2218006 "Cerebral edema (disorder)") because CID 7151 / 7159 list 79654002,
  and the segment's anatomic region (SCT 12738006 "Brain") already says where.
* There is no pre-coordinated concept for "contrast-enhancing tumour": enhancement is an
  imaging property, so label 3 is a "Neoplasm" and the Segment Label says "enhancing".

Other concepts used by the writers:

=========================  ===========================================================
Concept                    Code
=========================  ===========================================================
anatomic region            SCT 12738006 "Brain"
laterality (CID 244)       SCT 7771000 "Left", 24028007 "Right", 51440002 "Bilateral"
topographical modifier     SCT 261129000 "Midline" (for midline tumours, not a laterality)
procedure reported         DCM 126020 "Multiparametric MRI" (CID 100); the finding site
                           (Brain) says where, as CID 100 has no MR-brain concept
volume                     SCT 118565006 "Volume", UCUM "ml" "milliliter"
volume method (CID 7474)   DCM 126030 "Sum of segmented voxel method for volume"
lesion count               SCT 246206008 "Number of lesions", UCUM "{lesions}"
probability                DCM 122157 "Probability", UCUM "{probability}" (0..1)
algorithm family           DCM 123110 "Artificial Intelligence" (CID 7162)
comment                    DCM 121106 "Comment"
=========================  ===========================================================

Glioma grade groups (HGG / LGG) and the tumour type are predicted from imaging, not read from
histology, so the SNOMED CT histologic grade / diagnosis observables do not apply (and DCM 121071
"Finding" has a fixed role in TID 1501 that readers such as highdicom enforce); the concept
names, and the grade values, use the private coding scheme
``99TUMORLENS`` (PS3.16 8.2: private schemes start with "99"), identified in each object's
Coding Scheme Identification Sequence (PS3.3 C.12.1.1.4).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

PRIVATE_SCHEME: Final = "99TUMORLENS"
PRIVATE_SCHEME_NAME: Final = "tumorlens private concepts"
# PS3.5 B.2: a UUID-derived UID, fixed for the scheme.
PRIVATE_SCHEME_UID: Final = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:tumorlens:codes").int)


@dataclass(frozen=True)
class Concept:
    """A coded concept (PS3.3 8.8) as plain data, so it can sit in frozen dataclasses."""

    value: str
    meaning: str
    scheme: str = "SCT"

    def coded(self) -> CodedConcept:
        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


@dataclass(frozen=True)
class Region:
    """A BraTS tumour sub-region and how every writer names and draws it."""

    label: int
    key: str
    display: str
    property_type: Concept
    rgb: tuple[int, int, int]


MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Final = Concept(
    "49755003", "Morphologically Abnormal Structure"
)

REGIONS: Final[tuple[Region, ...]] = (
    Region(
        1, "core", "Necrotic / non-enhancing core", Concept("6574001", "Necrosis"), (230, 40, 40)
    ),
    Region(2, "oedema", "Peritumoural oedema", Concept("79654002", "Edema"), (40, 200, 70)),
    Region(3, "enhancing", "Enhancing tumour", Concept("108369006", "Neoplasm"), (250, 220, 30)),
)
REGION_BY_LABEL: Final = {region.label: region for region in REGIONS}
REGION_BY_TYPE_CODE: Final = {region.property_type.value: region for region in REGIONS}
BRATS_LABELS: Final = frozenset(REGION_BY_LABEL)

BRAIN: Final = Concept("12738006", "Brain")
LEFT: Final = Concept("7771000", "Left")
RIGHT: Final = Concept("24028007", "Right")
BILATERAL: Final = Concept("51440002", "Bilateral")
MIDLINE: Final = Concept("261129000", "Midline")
MULTIPARAMETRIC_MRI: Final = Concept("126020", "Multiparametric MRI", "DCM")

VOLUME: Final = Concept("118565006", "Volume")
MILLILITER: Final = Concept("ml", "milliliter", "UCUM")
SUM_OF_SEGMENTED_VOXELS: Final = Concept(
    "126030", "Sum of segmented voxel method for volume", "DCM"
)
NUMBER_OF_LESIONS: Final = Concept("246206008", "Number of lesions")
LESIONS_UNIT: Final = Concept("{lesions}", "lesions", "UCUM")
PROBABILITY: Final = Concept("122157", "Probability", "DCM")
PROBABILITY_UNIT: Final = Concept("{probability}", "probability", "UCUM")
COMMENT: Final = Concept("121106", "Comment", "DCM")
ARTIFICIAL_INTELLIGENCE: Final = Concept("123110", "Artificial Intelligence", "DCM")

WHOLE_TUMOUR: Final = Concept("WT", "Whole tumour (BraTS WT: labels 1-3)", PRIVATE_SCHEME)
TUMOUR_TYPE: Final = Concept("TYPE", "Imaging-predicted tumour type", PRIVATE_SCHEME)
GLIOMA_GRADE: Final = Concept("GRADE", "Imaging-predicted glioma grade group", PRIVATE_SCHEME)
HIGH_GRADE_GLIOMA: Final = Concept("HGG", "High-grade glioma (WHO grade 3-4)", PRIVATE_SCHEME)
LOW_GRADE_GLIOMA: Final = Concept("LGG", "Low-grade glioma (WHO grade 1-2)", PRIVATE_SCHEME)


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """An item of the Coding Scheme Identification Sequence (PS3.3 C.12.1.1.4) for ours."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        uid=PRIVATE_SCHEME_UID,
        responsible_organization="tumorlens",
    )
