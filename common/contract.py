"""The contract between the API and the workers: task name, payload and Redis keys.

Both sides import this module, so it imports only the standard library.

Image bytes never travel inside a Celery message. The API writes each decoded
image to its own Redis key, writes a task document (a Redis hash) and sends a
Celery task that carries only the task id, the image count and the detection
parameters. The worker reads the bytes, updates the task document as images
finish, stores the result document and pushes a token onto the task's done
list, which a synchronous caller waits on with BLPOP.

Every key below is written with a TTL, so Redis keeps nothing of a task once
its result has expired.
"""

import json
from typing import Literal, NamedTuple, NotRequired, TypedDict

TASK_NAME = "eventsnap.embed_faces"
QUEUE_NAME = "faces"
# Webhook deliveries have their own queue, so a backlog of embedding tasks
# does not hold back a delivery on a worker that consumes both.
WEBHOOK_TASK_NAME = "eventsnap.deliver_webhook"
WEBHOOK_QUEUE_NAME = "webhooks"
KEY_PREFIX = "eventsnap"

TaskState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class DetectionParams(TypedDict):
    """Per-request detector settings, validated by the API before enqueueing."""

    max_faces: int
    det_conf: float
    nms_thresh: float


class TaskPayload(TypedDict):
    """Keyword arguments of the embedding task; plain JSON by design."""

    task_id: str
    image_count: int
    params: DetectionParams
    request_id: str


class WebhookPayload(TypedDict):
    """Keyword arguments of the webhook delivery task."""

    task_id: str


class Face(TypedDict):
    """One detected face in the HTTP response shape."""

    bbox: list[float]
    kps: list[list[float]]
    det_score: float
    embedding: list[float]


ErrorCode = Literal[
    "image_decode_failed",
    "image_missing",
    "cancelled",
    "time_limit_exceeded",
    "worker_lost",
    "internal_error",
]


class ImageError(TypedDict):
    """A failure of one image, or of the whole task when `index` is None."""

    index: int | None
    code: ErrorCode
    message: str


class TaskResult(TypedDict):
    """The document the worker stores under `result_key(task_id)`."""

    task_id: str
    state: TaskState
    faces: list[list[Face] | None]
    errors: list[ImageError]
    worker: str
    timings_ms: NotRequired[dict[str, float]]


def image_key(task_id: str, index: int) -> str:
    """Return the Redis key that contains the raw bytes of one input image."""
    return f"{KEY_PREFIX}:image:{task_id}:{index}"


def task_key(task_id: str) -> str:
    """Return the Redis hash with a task's state, progress and timestamps."""
    return f"{KEY_PREFIX}:task:{task_id}"


def result_key(task_id: str) -> str:
    """Return the Redis key that contains a task's result document (JSON)."""
    return f"{KEY_PREFIX}:result:{task_id}"


def done_key(task_id: str) -> str:
    """Return the Redis list a worker pushes to once a task's result is stored."""
    return f"{KEY_PREFIX}:done:{task_id}"


def idempotency_key(key_digest: str) -> str:
    """Return the key that maps a client's Idempotency-Key (SHA-256 hex) to its task."""
    return f"{KEY_PREFIX}:idempotency:{key_digest}"


class DoneMessage(NamedTuple):
    """The outcome a worker pushes onto a synchronous task's done list when it succeeds."""

    state: str
    errors: list[ImageError]
    faces_json: bytes


def encode_done(state: str, errors: list[ImageError], faces_json: bytes) -> bytes:
    """Build a done-list entry that carries the outcome, so the waiter needs no extra read.

    The entry is a JSON header line followed by the result list's JSON bytes,
    which the API returns as they are. Other wake-ups push a bare token.
    """
    header = json.dumps({"state": state, "errors": errors}, separators=(",", ":"))
    return header.encode() + b"\n" + faces_json


def decode_done(entry: bytes) -> DoneMessage | None:
    """Return the outcome carried by a done-list entry, or None for a bare wake-up token."""
    header, newline, faces_json = entry.partition(b"\n")
    if not newline:
        return None
    fields = json.loads(header)
    return DoneMessage(fields["state"], fields["errors"], faces_json)


def worker_key(hostname: str) -> str:
    """Return the Redis key a worker refreshes as its heartbeat."""
    return f"{KEY_PREFIX}:worker:{hostname}"


WORKER_KEY_PATTERN = f"{KEY_PREFIX}:worker:*"
