"""Processing steps between the spool and the models: which series to use, and how."""
