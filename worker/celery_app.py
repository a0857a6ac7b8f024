"""The Celery application of the worker: `celery -A worker.celery_app worker --pool=solo`.

Models load once, when the worker process starts, before it takes any task.
A worker that cannot load them (missing files, CUDA requested but unavailable)
exits with an error instead of serving.
"""

import logging
import sys
from typing import Any

import redis
from celery import Celery, signals

from common.celery_config import celery_settings
from common.contract import TASK_NAME, DetectionParams
from common.logs import configure_logging
from worker.heartbeat import Heartbeat, package_version
from worker.model_files import resolve_model_files
from worker.models import load_models
from worker.settings import get_settings
from worker.tasks import TaskRunner, worker_name

logger = logging.getLogger("worker")

settings = get_settings()
app = Celery("eventsnap-worker")
app.conf.update(celery_settings(settings.redis_url))


class WorkerState:
    """What the worker process holds between tasks: the runner and its heartbeat."""

    runner: TaskRunner | None = None
    heartbeat: Heartbeat | None = None


state = WorkerState()


@signals.setup_logging.connect
def setup_logging(**_: Any) -> None:
    """Replace Celery's logging setup with the service's own format."""
    configure_logging(settings.log_level, settings.log_format)


@signals.worker_init.connect
def load_on_start(**_: Any) -> None:
    """Load the models before the worker consumes; exit the process if that fails."""
    logger.info("Worker starting: %s", worker_name())
    try:
        files = resolve_model_files(settings)
        models = load_models(files, settings)
    except Exception:
        logger.exception("Worker cannot start: loading the models failed")
        # Celery would log an exception raised here and go on consuming without
        # models, so leave the process instead.
        sys.exit(1)

    client = redis.Redis.from_url(settings.redis_url)
    state.runner = TaskRunner(client, models, settings)
    state.heartbeat = Heartbeat(
        client,
        state.runner.name,
        {
            "model_pack": files.pack,
            "detector": files.detector.name,
            "recognizer": files.recognizer.name,
            "provider": models.provider,
            "threads": models.threads,
            "det_size": list(settings.det_size),
            "onnxruntime": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
            "insightface": package_version("insightface"),
        },
    )


@signals.worker_ready.connect
def start_heartbeat(**_: Any) -> None:
    if state.heartbeat is not None:
        state.heartbeat.start()
    logger.info("Worker ready: consuming tasks")


@signals.worker_shutdown.connect
def stop_heartbeat(**_: Any) -> None:
    if state.heartbeat is not None:
        state.heartbeat.stop()
    logger.info("Worker stopped")


@app.task(name=TASK_NAME, ignore_result=True)
def embed_faces(task_id: str, image_count: int, params: DetectionParams, request_id: str) -> str:
    """Detect and embed the faces of one task's images; the result goes to Redis."""
    if state.runner is None:
        raise RuntimeError("models are not loaded; the worker_init handler did not run")
    return state.runner.run(task_id, image_count, params, request_id)
