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
from celery.worker.request import Request

from common.celery_config import celery_settings
from common.contract import (
    FINAL_STATES,
    TASK_NAME,
    WEBHOOK_TASK_NAME,
    DetectionParams,
    task_key,
)
from common.logs import configure_logging
from worker.heartbeat import Heartbeat, package_version
from worker.lease import DeliveryLease
from worker.metrics import TASKS, serve_metrics
from worker.model_files import resolve_model_files
from worker.models import load_models
from worker.settings import get_settings
from worker.tasks import TaskRunner, worker_name
from worker.watchdog import Watchdog
from worker.webhooks import WebhookDeliveryError, claim_delivery, deliver, release_delivery

logger = logging.getLogger("worker")

settings = get_settings()
# Configured here as well as in the setup_logging signal, because Celery sends
# worker_init, which loads the models, before it sets up logging.
configure_logging(settings.log_level, settings.log_format)
app = Celery("eventsnap-worker")
app.conf.update(celery_settings(settings.redis_url, settings.broker_visibility_timeout))


class WorkerState:
    """The worker process's state between tasks: runner, heartbeat, lease and watchdog."""

    runner: TaskRunner | None = None
    heartbeat: Heartbeat | None = None
    lease: DeliveryLease | None = None
    watchdog: Watchdog | None = None


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
    state.lease = DeliveryLease(client)
    state.watchdog = Watchdog(settings.task_hard_time_limit, fail_past_hard_limit)
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
        state.lease,
    )


def fail_past_hard_limit(task_id: str) -> None:
    """Record a task that ran past the hard time limit as failed; the watchdog calls this."""
    if state.runner is None:
        return
    limit = settings.task_hard_time_limit
    state.runner.store_failure(
        task_id,
        int(state.runner.redis.hget(task_key(task_id), "total") or 0),
        "time_limit_exceeded",
        f"The task ran longer than TASK_HARD_TIME_LIMIT ({limit:g} s) and its worker process "
        "was ended; submit fewer images per task.",
    )


@signals.worker_ready.connect
def start_heartbeat(**_: Any) -> None:
    if state.heartbeat is not None:
        state.heartbeat.start()
    if state.watchdog is not None:
        state.watchdog.start()
    logger.info(
        "Worker ready: consuming tasks; visibility_timeout=%ds soft_limit=%gs hard_limit=%gs "
        "max_attempts=%d",
        settings.broker_visibility_timeout,
        settings.task_soft_time_limit,
        settings.task_hard_time_limit,
        settings.task_max_attempts,
    )


@signals.task_received.connect
def lease_message(request: Request, **_: Any) -> None:
    """Start renewing the lease of a message once the worker holds it."""
    if state.lease is not None and request.id:
        state.lease.begin(request.id, str(request.message.delivery_tag))


@signals.task_postrun.connect
def release_message(task_id: str, **_: Any) -> None:
    if state.lease is not None:
        state.lease.end(task_id)


@signals.worker_shutdown.connect
def stop_heartbeat(**_: Any) -> None:
    if state.heartbeat is not None:
        state.heartbeat.stop()
    logger.info("Worker stopped")


@app.task(name=TASK_NAME, ignore_result=True)
def embed_faces(task_id: str, image_count: int, params: DetectionParams, request_id: str) -> str:
    """Detect and embed the faces of one task's images; the result goes to Redis."""
    if state.runner is None or state.watchdog is None:
        raise RuntimeError("models are not loaded; the worker_init handler did not run")
    state.watchdog.begin(task_id, request_id)
    try:
        final_state = state.runner.run(task_id, image_count, params, request_id)
    finally:
        state.watchdog.end()
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
