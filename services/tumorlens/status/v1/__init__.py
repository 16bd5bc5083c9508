"""Stubs generated from proto/tumorlens/v1/status.proto by proto/generate.py; do not edit."""
