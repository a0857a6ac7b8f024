"""Submit tasks to the workers and wait for their results, without blocking the event loop.

Image bytes go to Redis once, each under its own key with a TTL, in the same
pipeline as the task document. The Celery message carries only the task id,
the image count and the parameters. Waiting is a BLPOP on the task's done list
on an asyncio Redis connection, so a waiting request costs no thread.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from celery import Celery
from redis.typing import EncodableT, FieldT
from starlette.concurrency import run_in_threadpool

from api.images import CheckedImage
from api.settings import ApiSettings
from common.celery_config import celery_settings
from common.contract import (
    TASK_NAME,
    DetectionParams,
    ImageError,
    TaskPayload,
    done_key,
    image_key,
    result_key,
    task_key,
)

logger = logging.getLogger(__name__)


@dataclass
class TaskOutcome:
    """What a finished task left in Redis, read by the API after waiting."""

    state: str
    errors: list[ImageError]
    faces_json: bytes | None  # the result list as the worker serialised it


class TaskQueue:
    """The API's side of the queue: one asyncio Redis pool and one Celery producer."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        # No socket timeout: BLPOP blocks for up to REQUEST_TIMEOUT on purpose.
        # Connection failures still raise at once.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=5, health_check_interval=30
        )
        self.celery = Celery("eventsnap-api")
        self.celery.conf.update(celery_settings(settings.redis_url))
        # Fail fast when the broker is down instead of retrying for seconds per request.
        self.celery.conf.task_publish_retry_policy = {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        }

    async def close(self) -> None:
        await self.redis.aclose()
        await run_in_threadpool(self.celery.close)

    async def submit(
        self,
        images: Sequence[CheckedImage],
        params: DetectionParams,
        request_id: str,
        kind: str,
        extra: dict[FieldT, EncodableT] | None = None,
    ) -> str:
        """Store the images and the task document, then enqueue the task; return its id."""
        task_id = uuid.uuid4().hex
        ttl = self.settings.result_ttl
        document: dict[FieldT, EncodableT] = {
            "state": "queued",
            "kind": kind,
            "total": len(images),
            "done": 0,
            "created_at": time.time(),
            "request_id": request_id,
            "params": orjson.dumps(params),
            **(extra or {}),
        }

        pipe = self.redis.pipeline(transaction=False)
        for index, image in enumerate(images):
            pipe.set(image_key(task_id, index), image.data, ex=ttl)
        pipe.hset(task_key(task_id), mapping=document)
        pipe.expire(task_key(task_id), ttl)
        await pipe.execute()

        payload: TaskPayload = {
            "task_id": task_id,
            "image_count": len(images),
            "params": params,
            "request_id": request_id,
        }
        await run_in_threadpool(
            self.celery.send_task, TASK_NAME, kwargs=dict(payload), task_id=task_id
        )
        logger.info("Task %s queued: %d images, kind=%s", task_id, len(images), kind)
        return task_id

    async def wait(self, task_id: str, timeout: float) -> bool:
        """Wait until the worker signals the task finished; False on timeout."""
        # The outer timeout guards against a Redis that accepts the command but never answers.
        popped = await asyncio.wait_for(
            self.redis.blpop([done_key(task_id)], timeout=timeout), timeout=timeout + 5
        )
        return popped is not None

    async def outcome(self, task_id: str) -> TaskOutcome:
        """Read a finished task's state, errors and result bytes."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(task_key(task_id), ["state", "errors"])
        pipe.get(result_key(task_id))
        (state, errors), faces_json = await pipe.execute()
        return TaskOutcome(
            state=state.decode() if state else "missing",
            errors=orjson.loads(errors) if errors else [],
            faces_json=faces_json,
        )

    async def cancel_if_unfinished(self, task_id: str) -> bool:
        """Mark a queued or running task cancelled; return whether it was unfinished.

        Runs as one Lua script so a worker finishing at the same moment cannot
        be overwritten.
        """
        cancelled = await self.redis.eval(CANCEL_SCRIPT, 1, task_key(task_id), str(time.time()))
        return bool(cancelled)


CANCEL_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1])
  return 1
end
return 0
"""
