"""ONNX Runtime session factory: CUDA when the provider is installed and works, else CPU."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from tumorlens.errors import ConfigurationError

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def choose_providers(
    available: Sequence[str], prefer_gpu: bool = True, device_id: int = 0
) -> list[str | tuple[str, dict[str, Any]]]:
    """The provider list to ask for: CUDA first when installed and wanted, CPU always last."""
    providers: list[str | tuple[str, dict[str, Any]]] = []
    if prefer_gpu and CUDA_PROVIDER in available:
        providers.append((CUDA_PROVIDER, {"device_id": device_id}))
    providers.append(CPU_PROVIDER)
    return providers


def session_options(
    threads: int = 0, enable_mem_pattern: bool = True, enable_cpu_mem_arena: bool = True
) -> ort.SessionOptions:
    """``threads`` = intra-op threads (0: ONNX Runtime's default, one per physical core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(threads, 0)
    # One model call at a time per session: parallelism lives inside the ops.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = enable_mem_pattern
    options.enable_cpu_mem_arena = enable_cpu_mem_arena
    options.log_severity_level = 3  # errors only; provider fallback is logged by us
    return options


def create_session(
    model_path: Path,
    threads: int = 0,
    *,
    prefer_gpu: bool = True,
    device_id: int = 0,
    enable_mem_pattern: bool = True,
    enable_cpu_mem_arena: bool = True,
) -> ort.InferenceSession:
    """An inference session for ``model_path``; falls back to CPU if CUDA cannot start."""
    if not model_path.is_file():
        raise ConfigurationError(f"model file {model_path} not found")
    options = session_options(threads, enable_mem_pattern, enable_cpu_mem_arena)
    providers = choose_providers(ort.get_available_providers(), prefer_gpu, device_id)
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own pybind types; any failure means "try CPU"
        if len(providers) == 1:
            raise ConfigurationError(f"cannot load model {model_path}: {exc}") from exc
        log.warning("CUDA session for %s failed (%s); using CPU", model_path, exc)
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=[CPU_PROVIDER])
    except Exception as exc:
        raise ConfigurationError(f"cannot load model {model_path}: {exc}") from exc
