"""Worker configuration: model selection, provider choice and settings validation.

onnxruntime's CUDA and TensorRT providers cannot exist on these CPU-only
machines, so the provider decisions are tested with the provider lists that
onnxruntime-gpu reports; everything else runs the real worker process.
"""

import os
import time
from pathlib import Path

import pydantic
import pytest
import redis

from common.contract import WORKER_KEY_PATTERN
from tests.conftest import start_worker
from worker.model_files import (
    EMBEDDED_FILES,
    ModelFilesError,
    embedded_model_dir,
    files_in_dir,
    resolve_model_files,
)
from worker.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderUnavailableError,
    check_session_providers,
    provider_names,
    requested_providers,
)
from worker.settings import WorkerSettings

GPU_BUILD = [TENSORRT, CUDA, CPU]
CPU_BUILD = [CPU]
CACHE = Path("/tmp/trt-cache")


def make_pack(root: Path, pack: str, names: tuple[str, str]) -> Path:
    """Lay out a model pack folder with links to the embedded model files."""
    folder = root / pack
    folder.mkdir(parents=True)
    for source, name in zip(EMBEDDED_FILES, names, strict=True):
        (folder / name).symlink_to(embedded_model_dir() / source)
    return folder


def test_cpu_requested_uses_cpu_even_on_gpu_build() -> None:
    assert requested_providers("cpu", GPU_BUILD, CACHE) == [CPU]


def test_auto_prefers_cuda_when_offered() -> None:
    assert requested_providers("auto", GPU_BUILD, CACHE) == [CUDA, CPU]
    assert requested_providers("auto", CPU_BUILD, CACHE) == [CPU]


def test_cuda_requested_on_cpu_build_rejected() -> None:
    with pytest.raises(ProviderUnavailableError, match="EXECUTION_PROVIDER=cuda"):
        requested_providers("cuda", CPU_BUILD, CACHE)


def test_tensorrt_gets_fp16_and_engine_cache() -> None:
    providers = requested_providers("tensorrt", GPU_BUILD, CACHE)

    assert provider_names(providers) == [TENSORRT, CUDA, CPU]
    options = providers[0][1]  # type: ignore[index]
    assert options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(CACHE)


def test_cuda_session_fallen_back_to_cpu_rejected() -> None:
    """onnxruntime-gpu offers CUDA without a GPU, and the session quietly uses the CPU."""
    with pytest.raises(ProviderUnavailableError, match="runs on CPUExecutionProvider"):
        check_session_providers("cuda", [CPU], "det.onnx")


def test_cuda_session_on_cuda_accepted() -> None:
    assert check_session_providers("cuda", [CUDA, CPU], "det.onnx") == CUDA


def test_auto_session_on_cpu_warns(caplog: pytest.LogCaptureFixture) -> None:
    assert check_session_providers("auto", [CPU], "det.onnx") == CPU
    assert "serving on the CPU" in caplog.text


def test_embedded_models_are_default() -> None:
    files = resolve_model_files(WorkerSettings(_env_file=None))

    assert files.detector.name == "scrfd_500m_bnkps.onnx"
    assert files.recognizer.name == "w600k_mbf.onnx"
    assert files.detector.is_file()


def test_model_pack_resolved_under_root(tmp_path: Path) -> None:
    make_pack(tmp_path, "buffalo_s", ("det_500m.onnx", "w600k_mbf.onnx"))

    files = resolve_model_files(WorkerSettings(model_pack="buffalo_s", model_root=tmp_path))

    assert files.detector == tmp_path / "buffalo_s" / "det_500m.onnx"
    assert files.recognizer == tmp_path / "buffalo_s" / "w600k_mbf.onnx"
    assert files.pack == "buffalo_s"


def test_missing_pack_names_files_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesError) as raised:
        resolve_model_files(WorkerSettings(model_pack="antelopev2", model_root=tmp_path))

    assert "glintr100.onnx" in str(raised.value)
    assert "MODEL_ROOT" in str(raised.value)


def test_model_dir_found_by_graph_shape(tmp_path: Path) -> None:
    folder = make_pack(tmp_path, "custom", ("a.onnx", "b.onnx"))

    files = files_in_dir(folder)

    assert files.detector.name == "a.onnx"
    assert files.recognizer.name == "b.onnx"


def test_model_dir_with_two_detectors_rejected(tmp_path: Path) -> None:
    folder = make_pack(tmp_path, "custom", ("a.onnx", "b.onnx"))
    (folder / "c.onnx").symlink_to(embedded_model_dir() / EMBEDDED_FILES[0])

    with pytest.raises(ModelFilesError, match="exactly one detection model"):
        files_in_dir(folder)


@pytest.mark.parametrize(
    "value,expected", [("640", (640, 640)), ("640x480", (640, 480)), ("320,320", (320, 320))]
)
def test_det_size_parsed(value: str, expected: tuple[int, int]) -> None:
    os.environ["DET_SIZE"] = value
    try:
        assert WorkerSettings().det_size == expected
    finally:
        del os.environ["DET_SIZE"]


@pytest.mark.parametrize("value", ["abc", "641", "0x640"])
def test_det_size_invalid_rejected(value: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="DET_SIZE"):
        WorkerSettings(det_size=value)


def test_worker_refuses_cuda_without_gpu(redis_url: str, logs_dir: Path) -> None:
    worker = start_worker(redis_url, logs_dir / "worker-cuda.log", EXECUTION_PROVIDER="cuda")
    try:
        code = worker.process.wait(timeout=60)
    finally:
        worker.stop()

    assert code != 0
    assert "EXECUTION_PROVIDER=cuda" in worker.log()
    assert "Worker cannot start" in worker.log()


def test_worker_loads_pack_from_model_root(
    redis_url: str, redis_client: redis.Redis, logs_dir: Path, tmp_path: Path
) -> None:
    make_pack(tmp_path, "buffalo_s", ("det_500m.onnx", "w600k_mbf.onnx"))
    worker = start_worker(
        redis_url,
        logs_dir / "worker-pack.log",
        MODEL_PACK="buffalo_s",
        MODEL_ROOT=str(tmp_path),
        DET_SIZE="320x320",
        EXECUTION_PROVIDER="cpu",
        INTRA_OP_THREADS="1",
    )
    try:
        heartbeat = wait_for_heartbeat(redis_client, worker.process.pid)
    finally:
        worker.stop()

    assert heartbeat["model_pack"] == "buffalo_s"
    assert heartbeat["detector"] == "det_500m.onnx"
    assert heartbeat["det_size"] == [320, 320]
    assert heartbeat["threads"] == 1
    assert "Models loaded: pack=buffalo_s provider=CPUExecutionProvider" in worker.log()


def wait_for_heartbeat(client: redis.Redis, pid: int, timeout: float = 60) -> dict:
    import orjson

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key in client.scan_iter(match=WORKER_KEY_PATTERN):
            if key.endswith(f":{pid}".encode()):
                beat: dict = orjson.loads(client.get(key) or b"{}")
                return beat
        time.sleep(0.1)
    raise AssertionError(f"no heartbeat from worker pid {pid} within {timeout} s")
