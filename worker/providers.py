"""Execution-provider selection: the one place that decides where the models run.

onnxruntime-gpu lists CUDAExecutionProvider even on a machine without a GPU or
without the CUDA libraries, and a session created there quietly falls back to
the CPU. So the choice is checked twice: against the providers the build
offers before the sessions exist, and against the providers the created
sessions actually use.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.settings import ProviderName

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ProviderSpec = str | tuple[str, dict[str, Any]]


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider cannot be used, so the worker must not start."""


def provider_names(providers: Sequence[ProviderSpec]) -> list[str]:
    """Return the provider names of a providers list that may contain options."""
    return [spec[0] if isinstance(spec, tuple) else spec for spec in providers]


def requested_providers(
    requested: ProviderName, available: Sequence[str], trt_cache_dir: Path
) -> list[ProviderSpec]:
    """Return the providers list for new sessions, or raise if the build lacks them."""
    if requested == "cpu":
        return [CPU]

    if requested == "tensorrt":
        missing = [name for name in (TENSORRT, CUDA) if name not in available]
        if missing:
            raise ProviderUnavailableError(
                f"EXECUTION_PROVIDER=tensorrt but this onnxruntime build lacks {missing}; "
                f"it offers {list(available)}. Install onnxruntime-gpu with TensorRT "
                "libraries, or set EXECUTION_PROVIDER=cuda or cpu."
            )
        tensorrt_options = {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(trt_cache_dir),
        }
        return [(TENSORRT, tensorrt_options), CUDA, CPU]

    if CUDA in available:
        return [CUDA, CPU]
    if requested == "cuda":
        raise ProviderUnavailableError(
            f"EXECUTION_PROVIDER=cuda but this onnxruntime build offers only {list(available)}. "
            "Install onnxruntime-gpu (and only it), or set EXECUTION_PROVIDER=cpu "
            "to serve at CPU speed on purpose."
        )
    return [CPU]


def check_session_providers(
    requested: ProviderName, session_providers: Sequence[str], model_file: str
) -> str:
    """Return the provider a created session runs on, or raise if it is not the one requested.

    onnxruntime puts the provider it could initialise first; a CUDA session that
    failed to load cuDNN, for example, reports only the CPU provider.
    """
    primary = session_providers[0] if session_providers else CPU
    if requested == "cuda" and primary != CUDA:
        raise ProviderUnavailableError(
            f"EXECUTION_PROVIDER=cuda but the session for {model_file} runs on {primary}; "
            "onnxruntime could not initialise CUDA. Check that a GPU is visible "
            "(nvidia-smi), that the CUDA 12 and cuDNN 9 libraries are installed, and "
            "the onnxruntime log above."
        )
    if requested == "tensorrt" and primary != TENSORRT:
        raise ProviderUnavailableError(
            f"EXECUTION_PROVIDER=tensorrt but the session for {model_file} runs on {primary}; "
            "check the TensorRT libraries and the onnxruntime log above."
        )
    if requested == "auto" and primary == CPU:
        logger.warning(
            "No GPU provider could be used for %s: serving on the CPU, which is many "
            "times slower. Set EXECUTION_PROVIDER=cpu to silence this warning, or "
            "EXECUTION_PROVIDER=cuda to make a missing GPU stop the worker.",
            model_file,
        )
    return primary
