"""The committed status API stubs are what proto/generate.py makes of the .proto today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _generate_module() -> ModuleType:
    path = REPO / "proto" / "generate.py"
    spec = importlib.util.spec_from_file_location("tumorlens_proto_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is needed")
    generate = _generate_module()
    stale = generate.stale_files()
    assert not stale, (
        "generated stubs are stale; run `python proto/generate.py` and commit them:\n"
        + "\n".join(diff[:4000] for diff in stale.values())
    )


def test_staleness_is_detected(tmp_path: Path) -> None:
    """A changed or missing stub is reported; differing tool versions alone are not."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is needed")
    generate = _generate_module()
    generate.generate(tmp_path)
    assert generate.stale_files(tmp_path) == {}

    pb2 = tmp_path / "status_pb2.py"
    pb2.write_text(
        pb2.read_text()
        .replace("(grpcio-tools ", "(grpcio-tools 0.0.0 was ")
        .replace("# Protobuf Python Version: ", "# Protobuf Python Version: 0.")
    )
    assert generate.stale_files(tmp_path) == {}

    pb2.write_text(pb2.read_text().replace("tumorlens.status.v1.status_pb2", "elsewhere"))
    (tmp_path / "status_pb2.pyi").unlink()
    assert set(generate.stale_files(tmp_path)) == {"status_pb2.py", "status_pb2.pyi"}


def test_an_edited_proto_makes_the_stubs_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is needed")
    generate = _generate_module()
    proto = tmp_path / "tumorlens" / "v1" / "status.proto"
    proto.parent.mkdir(parents=True)
    text = (REPO / "proto" / "tumorlens" / "v1" / "status.proto").read_text()
    proto.write_text(
        text.replace("message HealthRequest {}", "message HealthRequest {\n  bool verbose = 1;\n}")
    )
    monkeypatch.setattr(generate, "PROTO_ROOT", tmp_path)
    assert set(generate.stale_files()) == {"status_pb2.py", "status_pb2.pyi"}
