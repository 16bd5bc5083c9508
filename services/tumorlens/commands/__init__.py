"""Subcommands of the ``tumorlens`` CLI, one module each with ``register(subparsers)``."""
