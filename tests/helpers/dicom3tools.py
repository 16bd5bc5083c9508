"""dicom3tools' ``dciodvfy``: an independent check of objects against the IODs of the standard."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's errors and warnings for ``path`` (skips the test when it is missing)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))]
