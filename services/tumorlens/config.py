"""Settings: built-in defaults < TOML file (``--config``) < ``TUMORLENS_*`` environment.

Settings are an immutable value passed explicitly to whatever needs them; nothing in the
package reads a process-wide mutable configuration.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumorlens.errors import ConfigurationError
from tumorlens.pipeline.series_selection import (
    SelectionRule,
    parse_rules,
    parse_rules_json,
    rules_to_json,
)

ENV_PREFIX = "TUMORLENS_"


@dataclass(frozen=True)
class Destination:
    """A DICOM node that receives the results (C-STORE SCP)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AE@host:port``."""
        try:
            ae_title, rest = text.strip().split("@", 1)
            host, port = rest.rsplit(":", 1)
            return cls(ae_title=ae_title.strip(), host=host.strip(), port=int(port))
        except ValueError as exc:
            raise ConfigurationError(
                f"destination {text!r} is not of the form AE@host:port"
            ) from exc

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tumorlens"


def _default_models_dir() -> Path:
    import tumorlens_zoo

    return Path(tumorlens_zoo.__file__).resolve().parent


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Each has the environment variable ``TUMORLENS_<NAME>``."""

    data_dir: Path = field(default_factory=_default_data_dir)
    models_dir: Path = field(default_factory=_default_models_dir)
    # DICOM listener (Upper Layer, PS3.8)
    ae_title: str = "TUMORLENS"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_pdu_size: int = 262144
    max_associations: int = 16
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    disk_reserve_mb: int = 512
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # results: sent to `destinations`; when none, back to the sending PACS as found in
    # `peers` (its AE title and the address where it listens: AE@host:port)
    destinations: tuple[Destination, ...] = ()
    peers: tuple[Destination, ...] = ()
    delivery_attempts: int = 5
    # study assembly (like Orthanc's StableAge)
    stable_age: float = 30.0
    assembler_interval: float = 1.0
    # queue and job store
    redis_url: str = ""
    worker_concurrency: int = 1
    max_attempts: int = 2
    broker_visibility_timeout: float = 600.0
    # status API
    grpc_address: str = "127.0.0.1:50051"
    # series selection: site rules that override the built-in T1/T1c/T2/FLAIR rules
    series_rules: tuple[SelectionRule, ...] = ()
    series_min_slices: int = 10
    # inference: models by card name in models_dir
    inference_threads: int = 0
    segmentation_model: str = "tumour3d"
    slice_model: str = "slice_type_2d"
    # whole-tumour components smaller than this (mL) are dropped as speckle
    min_lesion_ml: float = 0.1
    # result objects: SEG as BINARY (every viewer) or LABELMAP (PS3.3 2024+ viewers);
    # burned-in Secondary Capture overlays for PACS viewers that cannot show SEG
    segmentation_type: str = "BINARY"
    burned_overlays: bool = False
    log_level: str = "INFO"
    # Seconds a task sleeps after entering RUNNING: for fault-injection drills (kill a
    # worker mid-run) and the tests that prove recovery. Never set in production.
    debug_task_pause: float = 0.0

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(Settings)}


def _split_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ConfigurationError(f"expected a list, got {value!r}")


def _coerce(name: str, type_name: str, value: Any) -> Any:
    """Turn a TOML or environment value into the type the field declares."""
    try:
        if type_name == "Path":
            return Path(str(value)).expanduser()
        if type_name == "Path | None":
            return Path(str(value)).expanduser() if str(value) else None
        if type_name == "int":
            return int(value)
        if type_name == "float":
            return float(value)
        if type_name == "str":
            return str(value)
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if type_name == "tuple[str, ...]":
            return tuple(_split_list(value))
        if type_name == "tuple[SelectionRule, ...]":
            return parse_rules_json(value) if isinstance(value, str) else parse_rules(value)
        if type_name == "tuple[Destination, ...]":
            if isinstance(value, list) and value and isinstance(value[0], Mapping):
                return tuple(
                    Destination(str(d["ae_title"]), str(d["host"]), int(d["port"])) for d in value
                )
            return tuple(Destination.parse(v) for v in _split_list(value))
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigurationError(f"setting {name}: cannot use {value!r}: {exc}") from exc
    raise ConfigurationError(f"setting {name}: unsupported type {type_name}")


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, then ``config_file`` (TOML), then the environment.

    ``overrides`` (already typed values, e.g. from command-line flags) win over everything.
    The environment variable ``TUMORLENS_CONFIG`` names a config file when none is given.
    """
    env = os.environ if environ is None else environ
    types = _field_types()
    values: dict[str, Any] = {}
    path = config_file or (Path(env["TUMORLENS_CONFIG"]) if env.get("TUMORLENS_CONFIG") else None)
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read config file {path}: {exc}") from exc
        section = raw.get("tumorlens", raw)
        for key, value in section.items():
            if key not in types:
                raise ConfigurationError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, types[key], value)
    for name, type_name in types.items():
        env_value = env.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = _coerce(name, type_name, env_value)
    for name, value in overrides.items():
        if name not in types:
            raise ConfigurationError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = value
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if not 1 <= len(settings.ae_title) <= 16:
        raise ConfigurationError("ae_title must be 1 to 16 characters (PS3.5 AE VR)")
    if not 0 <= settings.dicom_port <= 65535:
        raise ConfigurationError("dicom_port must be 0..65535")
    if settings.stable_age < 0:
        raise ConfigurationError("stable_age must be >= 0")
    if settings.max_attempts < 1:
        raise ConfigurationError("max_attempts must be >= 1")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigurationError("tls_cert and tls_key go together")
    if settings.segmentation_type not in ("BINARY", "LABELMAP"):
        raise ConfigurationError("segmentation_type must be BINARY or LABELMAP")
    if settings.delivery_attempts < 1:
        raise ConfigurationError("delivery_attempts must be >= 1")
    if settings.min_lesion_ml < 0:
        raise ConfigurationError("min_lesion_ml must be >= 0")
    if settings.max_pdu_size and not 4096 <= settings.max_pdu_size <= 16 * 1024 * 1024:
        raise ConfigurationError("max_pdu_size must be 4096..16777216 bytes")


def settings_environ(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if f.name == "series_rules":
            text = rules_to_json(value)
        elif isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        env[ENV_PREFIX + f.name.upper()] = text
    return env
