"""Per-study analysis: from the stored instances of a study to findings and result objects."""
