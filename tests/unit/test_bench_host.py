"""bench/host.py: what every benchmark prints about its machine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import host

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 avx512bw

processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 avx512bw
"""

ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
"""


def test_x86_model_and_listed_extensions_in_fixed_order(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86)
    info = host.machine(cpuinfo)
    assert info["cpu"] == "AMD EPYC 9R14"
    # avx512bw is present but not one of ISA_FLAGS; the order is ISA_FLAGS', not the file's.
    assert info["isa"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]


def test_arm_features_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ARM)
    assert host.machine(cpuinfo)["isa"] == ["asimd", "sve"]


def test_no_cpuinfo_falls_back_to_platform(tmp_path: Path) -> None:
    info = host.machine(tmp_path / "absent")
    assert info["isa"] == []
    assert info["cpu"]  # platform.processor() or platform.machine()
    assert "no listed vector extensions" in host.describe(info)


def test_versions_from_metadata_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "PACKAGES", {"onnxruntime": ("onnxruntime",), "x": ("no-such-x",)})
    info = host.machine(Path("/nonexistent"))
    import onnxruntime

    assert info["onnxruntime"] == onnxruntime.__version__
    assert info["x"] is None
    assert host.describe(info).endswith(f"onnxruntime {onnxruntime.__version__}, x not installed")
