"""Time moving one 4 MB photo from the API to the worker, two ways, in one process.

Both paths start from the base64 text that the API has parsed out of the
request and end with the image bytes in the worker's hands:

- service: decode the base64 text, SET the bytes in Redis, publish the small
  Celery message (ids and parameters only), consume it, GET the bytes;
- plain Celery argument: publish a message whose keyword argument is the
  base64 text (Celery encodes it into its JSON message), consume and decode
  the message, decode the base64 text.

Both use the API's own base64 decoder, so the difference is the transport.
Each step is timed separately on the real Redis and the real Celery producer;
the consumer is a kombu queue, which is how a Celery worker reads messages.
"""

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from api.images import decode_base64
from bench.corpus import Photo
from common.celery_config import celery_settings
from common.contract import TASK_NAME, image_key

QUEUE = "eventsnap.bench.transfer"
WARMUP_RUNS = 3
CONSUME_TIMEOUT_S = 10.0


@dataclass
class PathTiming:
    """Per-run step times of one transfer path, in milliseconds."""

    steps: dict[str, list[float]]

    def totals_ms(self) -> list[float]:
        return [sum(values) for values in zip(*self.steps.values(), strict=True)]

    def summary(self) -> dict[str, Any]:
        """Return the medians of the total and of every step, in milliseconds."""
        return {
            "median_ms": statistics.median(self.totals_ms()),
            "runs": len(self.totals_ms()),
            "steps_median_ms": {
                name: statistics.median(values) for name, values in self.steps.items()
            },
        }


def timed(steps: dict[str, list[float]], name: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = action()
    steps.setdefault(name, []).append((time.perf_counter() - started) * 1000)
    return result


def measure_transfer(redis_url: str, photo: Photo, runs: int) -> dict[str, Any]:
    """Return median times of both paths over `runs` runs, after a few untimed warm-up runs."""
    text = photo.base64()
    client = redis.Redis.from_url(redis_url)
    app = Celery("eventsnap-bench-transfer")
    app.conf.update(celery_settings(redis_url))
    service = PathTiming({})
    plain = PathTiming({})

    with app.connection_for_read() as connection:
        # Declare the queue first: the Redis transport drops a message sent to
        # an exchange that has no bound queue yet.
        queue = connection.SimpleQueue(QUEUE)
        try:
            for run in range(WARMUP_RUNS + runs):
                service_steps: dict[str, list[float]] = {}
                plain_steps: dict[str, list[float]] = {}
                run_service_path(client, app, queue, text, service_steps)
                run_plain_path(app, queue, text, plain_steps)
                if run >= WARMUP_RUNS:
                    for name, values in service_steps.items():
                        service.steps.setdefault(name, []).extend(values)
                    for name, values in plain_steps.items():
                        plain.steps.setdefault(name, []).extend(values)
        finally:
            queue.queue.delete()
            queue.close()
    app.close()
    client.close()
    return {
        "photo_bytes": len(photo.data),
        "base64_chars": len(text),
        "service": service.summary(),
        "plain_celery_argument": plain.summary(),
    }


def run_service_path(
    client: redis.Redis, app: Celery, queue: Any, text: str, steps: dict[str, list[float]]
) -> None:
    task_id = uuid.uuid4().hex
    key = image_key(task_id, 0)
    data = timed(steps, "api_base64_decode", lambda: decode_base64(text))
    timed(steps, "api_redis_set", lambda: client.set(key, data, ex=60))
    payload = {"task_id": task_id, "image_count": 1, "params": {}, "request_id": task_id}
    timed(steps, "api_publish", lambda: app.send_task(TASK_NAME, kwargs=payload, queue=QUEUE))
    timed(steps, "worker_consume", lambda: consume_kwargs(queue))
    received = timed(steps, "worker_redis_get", lambda: client.get(key))
    client.delete(key)
    if received != data:
        raise RuntimeError("The bytes read back from Redis differ from the bytes written")


def run_plain_path(app: Celery, queue: Any, text: str, steps: dict[str, list[float]]) -> None:
    payload = {"task_id": uuid.uuid4().hex, "image": text}
    timed(steps, "api_publish", lambda: app.send_task(TASK_NAME, kwargs=payload, queue=QUEUE))
    kwargs = timed(steps, "worker_consume", lambda: consume_kwargs(queue))
    timed(steps, "worker_base64_decode", lambda: decode_base64(kwargs["image"]))


def consume_kwargs(queue: Any) -> dict[str, Any]:
    """Take one Celery message from the queue, decode its JSON body and return its kwargs."""
    message = queue.get(block=True, timeout=CONSUME_TIMEOUT_S)
    # Celery's message protocol 2 body is [args, kwargs, embed].
    _args, kwargs, _embed = message.decode()
    message.ack()
    return dict(kwargs)
