"""Worker settings, read from environment variables (no prefix) by pydantic-settings."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ModelPackName = Literal["antelopev2", "buffalo_l", "buffalo_s"]
ProviderName = Literal["auto", "cuda", "tensorrt", "cpu"]


def available_cpu_count() -> int:
    """Return the cores this process may run on (cgroup and affinity aware)."""
    return len(os.sched_getaffinity(0)) or 1


class WorkerSettings(BaseSettings):
    """Every option the worker reads; invalid values stop the worker at start."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis used as Celery broker, image store and result store.",
    )
    result_ttl: int = Field(
        default=3600, gt=0, description="Seconds that task documents and results live in Redis."
    )
    model_dir: Path | None = Field(
        default=None,
        description="Folder with one SCRFD detector and one ArcFace recognizer (.onnx).",
    )
    model_pack: ModelPackName | None = Field(
        default=None, description="Named model pack, loaded from MODEL_ROOT/<pack>."
    )
    model_root: Path = Field(
        default=Path("~/.insightface/models"),
        description="Folder that contains the model packs, one sub-folder per pack.",
    )
    execution_provider: ProviderName = Field(
        default="auto",
        description="auto: CUDA if the sessions get it, else CPU with a warning; "
        "cuda and tensorrt: refuse to start without them; cpu.",
    )
    # NoDecode: pydantic-settings would otherwise parse the value as JSON first.
    det_size: Annotated[tuple[int, int], NoDecode] = Field(
        default=(640, 640),
        description="Detector input size as WIDTHxHEIGHT (or one number for a square).",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime intra-op threads per session; 0 uses the cores "
        "this process may run on.",
    )
    max_faces_per_image: int = Field(
        default=256, ge=1, description="Cap on faces kept per image, largest first."
    )
    chunk_images: int = Field(
        default=32,
        ge=1,
        description="Images processed between progress updates and cancellation checks; "
        "the recognizer runs once over all faces of a chunk.",
    )
    detection_batch_size: int = Field(
        default=8, ge=1, description="Letterboxed images per detector run."
    )
    # On 2 CPU cores the recognizer's time per face was flat from 8 to 128 faces
    # per run, so larger batches only held more memory. On a GPU a larger value
    # may pay off; bench/gpu.sh measures batch sizes there.
    recognition_batch_size: int = Field(
        default=32, ge=1, description="Faces per recognizer run; bounds its memory."
    )
    trt_cache_dir: Path = Field(
        default=Path("/var/cache/eventsnap/trt"),
        description="TensorRT engine cache, so a restart does not rebuild engines.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Key for the HMAC-SHA256 signature of webhook deliveries; unset sends "
        "them unsigned.",
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, description="Seconds one webhook POST may take before it fails."
    )
    webhook_max_retries: int = Field(
        default=10, ge=0, description="Retries of a failed webhook delivery after the first try."
    )
    webhook_retry_backoff_max: int = Field(
        default=300,
        ge=1,
        description="Longest wait between webhook retries, in seconds. Waits double from "
        "1 s up to this value, each shortened by random jitter.",
    )
    broker_visibility_timeout: int = Field(
        default=30,
        ge=15,
        description="Seconds after the last lease renewal at which the broker hands a task "
        "of a dead worker to another one. Live workers renew every 5 s.",
    )
    task_soft_time_limit: float = Field(
        default=600.0,
        ge=0,
        description="Seconds a task may run; checked between detector batches, then the task "
        "ends failed with code time_limit_exceeded. 0 disables the limit.",
    )
    task_hard_time_limit: float = Field(
        default=900.0,
        ge=0,
        description="Seconds after which a watchdog marks a still running task failed and "
        "exits the worker process, for a model call that never returns. 0 disables it.",
    )
    task_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Starts of one task (the first delivery plus redeliveries after its "
        "worker died) after which it ends failed with code worker_lost.",
    )
    worker_metrics_port: int = Field(
        default=9808,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus endpoint (/metrics); 0 disables it.",
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json` writes one JSON object per log line."
    )

    @field_validator("model_pack", "model_dir", mode="before")
    @classmethod
    def blank_means_unset(cls, value: object) -> object:
        """Treat an empty value, or `none` (an image built without a pack), as unset."""
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("det_size", mode="before")
    @classmethod
    def parse_det_size(cls, value: object) -> object:
        """Accept `640`, `640x640` and `640,480` as well as a pair."""
        if isinstance(value, int):
            return (value, value)
        if isinstance(value, str):
            parts = value.lower().replace(",", "x").split("x")
            if len(parts) == 1:
                parts = parts * 2
            if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
                raise ValueError(f"DET_SIZE must look like 640x640, got {value!r}")
            width, height = (int(part) for part in parts)
            if width % 32 or height % 32 or width <= 0 or height <= 0:
                raise ValueError(f"DET_SIZE sides must be positive multiples of 32, got {value!r}")
            return (width, height)
        return value

    @property
    def threads(self) -> int:
        """Return the intra-op thread count actually used."""
        return self.intra_op_threads or available_cpu_count()


@lru_cache(maxsize=1)
def get_settings() -> WorkerSettings:
    """Return the process-wide settings, read once from the environment."""
    return WorkerSettings()
