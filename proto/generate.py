"""Regenerate the committed Python stubs from the .proto files in this directory.

    python proto/generate.py           # write services/tumorlens/status/v1/status_pb2*.py(i)
    python proto/generate.py --check   # exit 1 if the committed stubs are stale

The .proto keeps the conventional layout (package ``tumorlens.v1`` in ``tumorlens/v1/``), so
protoc would emit the Python module ``tumorlens.v1.status_pb2``. The service ships it as
``tumorlens.status.v1.status_pb2``; protoc has no option for that, so the few places that
name the module are rewritten after generation, and each rewrite must match or generation
fails (a new protoc that emits different text cannot silently produce broken imports).

Needs ``grpcio-tools`` (a dev dependency), not the installed service.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO = PROTO_ROOT.parent
PACKAGE_DIR = REPO / "services" / "tumorlens" / "status" / "v1"


@dataclass(frozen=True)
class Target:
    proto: str  # path under proto/
    protoc_module: str  # the Python module protoc names it after
    module: str  # the module it is committed as


TARGETS = (
    Target(
        "tumorlens/v1/status.proto", "tumorlens.v1.status_pb2", "tumorlens.status.v1.status_pb2"
    ),
)
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")

# Lines that record which tool versions generated a file. They differ between developers'
# grpcio-tools releases without the stubs being stale, so --check compares without them.
_VERSION_STAMPS = (
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"^# Regenerate with .*$", re.M),
    re.compile(r"(_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,\s*'[^']*',"),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
)


def tools_version() -> str:
    return metadata.version("grpcio-tools")


def _rewrite(text: str, old: str, new: str, file: str) -> str:
    if old not in text:
        raise RuntimeError(f"{file}: expected {old!r} in protoc's output; update generate.py")
    return text.replace(old, new)


def _fix_module_paths(target: Target, suffix: str, text: str) -> str:
    """Make the generated code name ``target.module`` instead of protoc's module path."""
    name = Path(target.proto).stem
    old_pkg, new_pkg = target.protoc_module.rsplit(".", 1)[0], target.module.rsplit(".", 1)[0]
    alias = target.protoc_module.replace("_", "__").replace(".", "_dot_")
    if suffix == "_pb2.py":
        # The module name becomes each message class's __module__ (pickling, repr).
        text = _rewrite(text, f"'{target.protoc_module}'", f"'{target.module}'", name + suffix)
    elif suffix == "_pb2_grpc.py":
        text = _rewrite(
            text,
            f"from {old_pkg} import {name}_pb2 as {alias}",
            f"from {new_pkg} import {name}_pb2 as {alias}",
            name + suffix,
        )
        old_path = old_pkg.replace(".", "/") + f"/{name}_pb2_grpc.py"
        new_path = new_pkg.replace(".", "/") + f"/{name}_pb2_grpc.py"
        text = _rewrite(text, old_path, new_path, name + suffix)
    # protoc's code is not written for mypy --strict or our ruff rules, and pyproject's
    # excludes do not reach the .pyi; mypy still reads its types for the importers.
    header = (
        f"# Regenerate with `python proto/generate.py` (grpcio-tools {tools_version()}).\n"
        "# mypy: ignore-errors\n"
        "# ruff: noqa\n"
        "# fmt: off\n"
    )
    lines = text.splitlines(keepends=True)
    at = 1 if lines and lines[0].startswith("# -*- coding") else 0  # must stay on line 1
    return "".join([*lines[:at], header, *lines[at:]])


def generate(out_dir: Path) -> list[Path]:
    """Generate every target's stubs into ``out_dir`` (flat); returns the files written."""
    from grpc_tools import protoc  # dev dependency: imported only when generating

    well_known = resources.files("grpc_tools") / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        for target in TARGETS:
            args = [
                "protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={raw}",
                f"--grpc_python_out={raw}",
                f"--pyi_out={raw}",
                str(PROTO_ROOT / target.proto),
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {target.proto}")
            stem = target.proto.removesuffix(".proto")
            for suffix in SUFFIXES:
                text = (raw / (stem + suffix)).read_text()
                dest = out_dir / (Path(stem).name + suffix)
                dest.write_text(_fix_module_paths(target, suffix, text))
                written.append(dest)
    return written


def _normalised(text: str) -> str:
    for pattern in _VERSION_STAMPS:
        text = pattern.sub(lambda m: m.group(1) if m.groups() else "", text)
    return text


def stale_files(committed_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """Committed stubs that differ from freshly generated ones: file name -> unified diff."""
    stale: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate(Path(tmp)):
            committed = committed_dir / fresh.name
            old = _normalised(committed.read_text()) if committed.exists() else ""
            new = _normalised(fresh.read_text())
            if old != new:
                diff = difflib.unified_diff(
                    old.splitlines(keepends=True),
                    new.splitlines(keepends=True),
                    f"committed/{fresh.name}",
                    f"generated/{fresh.name}",
                )
                stale[fresh.name] = "".join(diff)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name, diff in stale.items():
            print(f"stale: {name}\n{diff}", file=sys.stderr)
        if stale:
            print("run `python proto/generate.py` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    for path in generate(PACKAGE_DIR):
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
