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
from functools import partial
from typing import cast

import orjson
import redis.asyncio as aioredis
from celery import Celery
from redis.typing import EncodableT, FieldT
from starlette.concurrency import run_in_threadpool

from api.images import CheckedImage
from api.settings import ApiSettings
from common.celery_config import celery_settings
from common.contract import (
    QUEUE_NAME,
    TASK_NAME,
    WEBHOOK_TASK_NAME,
    DetectionParams,
    ImageError,
    TaskPayload,
    WebhookPayload,
    done_key,
    idempotency_key,
    image_key,
    result_key,
    task_key,
)
from common.task_document import CALLBACK_FIELD, CLAIM_WEBHOOK_SCRIPT, WEBHOOK_CLAIM_FIELD

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue contains MAX_QUEUE_DEPTH or more waiting task messages."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"{depth} tasks are waiting, the limit is {limit} (MAX_QUEUE_DEPTH)")
        self.depth = depth
        self.limit = limit


@dataclass
class TaskOutcome:
    """The state, errors and result bytes a finished task left in Redis."""

    state: str
    errors: list[ImageError]
    faces_json: bytes | None  # the result list as the worker serialised it


class TaskQueue:
    """The API's side of the queue: one asyncio Redis pool and one Celery producer."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        # A second pool for BLPOP, which blocks for up to REQUEST_TIMEOUT on purpose;
        # its socket timeout must outlast that wait.
        self.waiting_redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.request_timeout + 5,
            socket_connect_timeout=5,
            health_check_interval=30,
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
        await self.waiting_redis.aclose()
        await run_in_threadpool(self.celery.close)

    async def submit(
        self,
        images: Sequence[CheckedImage],
        params: DetectionParams,
        request_id: str,
        kind: str,
        extra: dict[FieldT, EncodableT] | None = None,
        task_id: str | None = None,
    ) -> str:
        """Store the images and the task document, then enqueue the task; return its id.

        If the message cannot be sent, the stored keys are deleted again, so no
        task stays `queued` without a message that would run it. Raises
        QueueFullError when MAX_QUEUE_DEPTH messages are waiting; the keys
        written in the same round trip are deleted again before it raises.
        Concurrent requests may pass the check together, so the queue can
        exceed the limit by the number of requests in flight.
        """
        task_id = task_id or uuid.uuid4().hex
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

        # The queue depth is read in the same round trip as the writes. When the
        # queue turns out to be full, the keys just written are deleted again.
        keys = [image_key(task_id, index) for index in range(len(images))]
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(QUEUE_NAME)
        for key, image in zip(keys, images, strict=True):
            pipe.set(key, image.data, ex=ttl)
        pipe.hset(task_key(task_id), mapping=document)
        pipe.expire(task_key(task_id), ttl)
        depth, *_ = await pipe.execute()
        if depth >= self.settings.max_queue_depth:
            await self.redis.delete(task_key(task_id), *keys)
            raise QueueFullError(depth, self.settings.max_queue_depth)

        payload: TaskPayload = {
            "task_id": task_id,
            "image_count": len(images),
            "params": params,
            "request_id": request_id,
        }
        # The explicit reprs spare Celery a saferepr of the arguments, about a
        # fifth of send_task's time. The request id stays in the repr, because
        # the log filter tags Celery's own "received" lines with it from there.
        send = partial(
            self.celery.send_task,
            TASK_NAME,
            kwargs=dict(payload),
            task_id=task_id,
            argsrepr="()",
            kwargsrepr=repr(
                {"task_id": task_id, "image_count": len(images), "request_id": request_id}
            ),
        )
        try:
            await run_in_threadpool(send)
        except Exception:
            await self.redis.delete(task_key(task_id), *keys)
            raise
        logger.info("Task %s queued: %d images, kind=%s", task_id, len(images), kind)
        return task_id

    async def wait(self, task_id: str, timeout: float) -> bytes | None:
        """Wait until the worker signals the task finished; return its done-list entry.

        Returns None on timeout. The entry may carry the outcome (see
        `common.contract.decode_done`); otherwise read it with `outcome`.
        """
        # The outer timeout guards against a Redis that accepts the command but never replies.
        try:
            popped = await asyncio.wait_for(
                self.waiting_redis.blpop([done_key(task_id)], timeout=timeout), timeout=timeout + 5
            )
        except TimeoutError:
            logger.warning("BLPOP for task %s timed out: Redis sent no reply", task_id)
            return None
        if popped is None:
            return None
        entry = popped[1]
        return entry if isinstance(entry, bytes) else entry.encode()

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
        """Mark a queued or running task cancelled; return whether it was unfinished."""
        previous = await self.cancel(task_id, "Cancelled before it finished.")
        return previous in ("queued", "running")

    async def cancel(self, task_id: str, reason: str, kind: str = "") -> str | None:
        """Mark a queued or running task cancelled and return the state it had before.

        Returns None for an unknown or expired task, and for a task of another
        kind when `kind` is given. A task in a final state is left as it is.
        Runs as one Lua script, so a worker finishing at the same moment is
        never overwritten.
        """
        error: ImageError = {"index": None, "code": "cancelled", "message": reason}
        previous = await self.redis.eval(
            CANCEL_SCRIPT,
            1,
            task_key(task_id),
            str(time.time()),
            orjson.dumps([error]),
            kind,
        )
        return previous.decode() if previous else None

    async def read_task(self, task_id: str) -> tuple[dict[bytes, bytes], bytes | None] | None:
        """Return a task's hash fields and result bytes, read atomically; None if unknown."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(task_key(task_id))
        pipe.get(result_key(task_id))
        fields, result = await pipe.execute()
        if not fields:
            return None
        return fields, result

    async def enqueue_webhook(self, task_id: str) -> bool:
        """Send the webhook delivery task unless another process already did.

        Returns whether this call sent it. Tasks without a callback URL send nothing.
        """
        claimed = await self.redis.eval(
            CLAIM_WEBHOOK_SCRIPT,
            1,
            task_key(task_id),
            CALLBACK_FIELD,
            WEBHOOK_CLAIM_FIELD,
            str(time.time()),
        )
        if not claimed:
            return False
        payload: WebhookPayload = {"task_id": task_id}
        try:
            await run_in_threadpool(self.celery.send_task, WEBHOOK_TASK_NAME, kwargs=dict(payload))
        except Exception:
            # Release the claim: the worker claims it again when it takes the
            # task's message from the queue and finds the task final.
            await self.redis.hdel(task_key(task_id), WEBHOOK_CLAIM_FIELD)
            logger.exception("Task %s: sending the webhook delivery task failed", task_id)
            return False
        logger.info("Task %s: webhook delivery queued", task_id)
        return True

    async def claim_idempotency_key(self, key_digest: str, record: bytes) -> bytes | None:
        """Store `record` under a client's idempotency key unless it exists.

        Returns None when this call stored it, else the record stored first.
        SET NX makes concurrent requests with one key agree on a single winner.
        """
        key = idempotency_key(key_digest)
        ttl = self.settings.result_ttl
        for _ in range(3):
            if await self.redis.set(key, record, nx=True, ex=ttl):
                return None
            # The pool returns bytes because it is created without decode_responses.
            existing = cast("bytes | None", await self.redis.get(key))
            if existing is not None:
                return existing
            # The first record expired between SET and GET; try to store ours again.
        raise RuntimeError(f"idempotency key {key} changed three times in a row")

    async def release_idempotency_key(self, key_digest: str) -> None:
        """Delete a client's idempotency key after its submission failed."""
        await self.redis.delete(idempotency_key(key_digest))


CANCEL_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return false
end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'kind') ~= ARGV[3] then
  return false
end
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1], 'errors', ARGV[2])
end
return state
"""
"""Lua script: cancel a queued or running task; return its previous state or nil.

KEYS[1] is the task hash; ARGV is (now, errors JSON, required kind or '').
"""
