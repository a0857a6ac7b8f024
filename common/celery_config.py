"""Celery settings shared by the API (which sends tasks) and the workers.

Each setting documents its consequence where it is declared.
"""

from typing import Any

from kombu import Queue

from common.contract import QUEUE_NAME, TASK_NAME, WEBHOOK_QUEUE_NAME, WEBHOOK_TASK_NAME

# Seconds after which kombu's Redis transport hands an unacknowledged message
# to another worker. Workers renew the lease of the message they run on every
# heartbeat (see worker/lease.py), so this bounds how long a task of a killed
# worker waits for redelivery, not how long a task may run.
VISIBILITY_TIMEOUT_S = 30

# Seconds between two scans of an idle worker for messages whose lease expired.
# kombu's default scan runs every 10 s but queries Redis only on every 10th
# scan (kombu 5.7: `unacked_restore_interval` times `unacked_restore_throttle`).
RESTORE_INTERVAL_S = 2


def celery_settings(
    redis_url: str, visibility_timeout: int = VISIBILITY_TIMEOUT_S
) -> dict[str, Any]:
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
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
        },
        # A worker keeps reconnecting while Redis is down, at start and later,
        # instead of exiting after Celery's default of 100 attempts.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
    }
