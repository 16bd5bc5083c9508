"""What a benchmark ran on: CPU model, vector extensions, runtime versions.

Every benchmark prints :func:`describe` first. Absolute figures and even the ONNX Runtime vs
torch ratio move between machines of one kind (the README's tumour3d ratios), so a figure
without its machine cannot be compared with another.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

#: Vector extensions that decide which kernels ONNX Runtime (MLAS) and torch (oneDNN) pick.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve")

#: Distribution names whose versions are reported; the first installed of each group counts.
PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "torch": ("torch",)}


def _version(names: tuple[str, ...]) -> str | None:
    # Package metadata, not an import: importing torch would add seconds to every start.
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """``cpu`` (model name), ``isa`` (those of :data:`ISA_FLAGS` present) and one version per
    :data:`PACKAGES` key (None where not installed). x86 lists ``flags``, Arm ``Features``."""
    model, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    info: dict[str, Any] = {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags]}
    info.update({key: _version(names) for key, names in PACKAGES.items()})
    return info


def describe(info: dict[str, Any]) -> str:
    """One line: ``cpu: MODEL (ISA ...); onnxruntime X, torch Y``."""
    isa = " ".join(info["isa"]) or "no listed vector extensions"
    versions = ", ".join(f"{key} {info[key] or 'not installed'}" for key in PACKAGES)
    return f"cpu: {info['cpu']} ({isa}); {versions}"
