"""``tumorlens-train phantoms``: synthetic multi-sequence brain tumour phantoms (BraTS layout)."""

from tumorlens_train.phantoms.command import register

__all__ = ["register"]
