"""The Celery application of the worker: `celery -A worker.celery_app worker --pool=solo`.

Models load once, when the worker process starts, before it takes any task.
A worker that cannot load them (missing files, CUDA requested but unavailable)
exits with an error instead of serving.
"""

import logging
import sys
from typing import Any

import redis
from celery import Celery, Task, signals

from common.celery_config import celery_settings
from common.contract import FINAL_STATES, TASK_NAME, WEBHOOK_TASK_NAME, DetectionParams
from common.logs import configure_logging
from worker.heartbeat import Heartbeat, package_version
from worker.metrics import TASKS, serve_metrics
from worker.model_files import resolve_model_files
from worker.models import load_models
from worker.settings import get_settings
from worker.tasks import TaskRunner, worker_name
from worker.webhooks import WebhookDeliveryError, claim_delivery, deliver, release_delivery

logger = logging.getLogger("worker")

settings = get_settings()
# Configured here as well as in the setup_logging signal, because Celery sends
# worker_init, which loads the models, before it sets up logging.
configure_logging(settings.log_level, settings.log_format)
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

    serve_metrics(settings.worker_metrics_port)
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
    final_state = state.runner.run(task_id, image_count, params, request_id)
    TASKS.labels(final_state).inc()
    if final_state in FINAL_STATES:
        enqueue_webhook(state.runner.redis, task_id)
    return final_state


def enqueue_webhook(client: redis.Redis, task_id: str) -> None:
    """Send the delivery task for a finished task that has a callback URL, once per task."""
    if not claim_delivery(client, task_id):
        return
    try:
        deliver_webhook.apply_async(kwargs={"task_id": task_id})
    except Exception:
        release_delivery(client, task_id)
        # NOTE: with the claim released but no message sent, nothing retries
        # this webhook; the broker is unreachable, so this worker stalls too.
        logger.exception("Task %s: sending the webhook delivery task failed", task_id)
        return
    logger.info("Task %s: webhook delivery queued", task_id)


webhook_redis = redis.Redis.from_url(settings.redis_url)
webhook_secret = (
    settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else None
)


@app.task(
    name=WEBHOOK_TASK_NAME,
    bind=True,
    ignore_result=True,
    autoretry_for=(WebhookDeliveryError,),
    retry_backoff=True,
    retry_backoff_max=settings.webhook_retry_backoff_max,
    retry_jitter=True,
    max_retries=settings.webhook_max_retries,
)
def deliver_webhook(self: "Task[Any, None]", task_id: str) -> None:
    """POST a finished task's document to its callback URL; Celery retries failures."""
    attempt = self.request.retries + 1
    try:
        deliver(webhook_redis, task_id, webhook_secret, settings.webhook_timeout, attempt)
    except WebhookDeliveryError:
        if self.request.retries >= settings.webhook_max_retries:
            logger.error("Task %s: webhook given up after %d attempts", task_id, attempt)
        raise
