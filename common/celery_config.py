"""Celery settings shared by the API (which sends tasks) and the workers.

Each setting documents its consequence where it is declared.
"""

from typing import Any

from kombu import Queue

from common.contract import QUEUE_NAME, TASK_NAME, WEBHOOK_QUEUE_NAME, WEBHOOK_TASK_NAME

# The longest a task may run before the broker hands it to another worker
# (Redis transport only). It must exceed the longest allowed task, or a slow
# but healthy task would be delivered twice. Tasks are idempotent, so a second
# delivery after a crash is safe; it is merely wasted work.
VISIBILITY_TIMEOUT_S = 3600


def celery_settings(redis_url: str) -> dict[str, Any]:
    """Return the Celery configuration for a broker at `redis_url`."""
    return {
        "broker_url": redis_url,
        # Results travel through the service's own Redis keys, not Celery's backend.
        "result_backend": None,
        "task_ignore_result": True,
        # JSON only: a pickle message from anyone who can reach Redis would run code.
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_routes": {
            TASK_NAME: {"queue": QUEUE_NAME},
            WEBHOOK_TASK_NAME: {"queue": WEBHOOK_QUEUE_NAME},
        },
        "task_default_queue": QUEUE_NAME,
        # A worker started without -Q consumes every queue listed here.
        "task_queues": [Queue(QUEUE_NAME), Queue(WEBHOOK_QUEUE_NAME)],
        # Acknowledge after the task finishes, and requeue it if the worker process
        # dies mid-task, so a crashed worker loses no work.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per worker: a prefetched task would wait behind a
        # long one instead of going to an idle worker.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
    }
