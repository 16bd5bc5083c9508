"""DICOM result objects for the hospital PACS: SEG, Comprehensive 3D SR, Encapsulated PDF and
burned-in Secondary Capture, all built from one :class:`~tumorlens.writers.findings.Findings`.

Every object goes into a new series of the source study with UIDs derived from the study UID,
the study version and the model identities, so a re-run replaces rather than duplicates.
"""
