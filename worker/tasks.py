"""The embedding task: read a task's images from Redis, run the models, store the result.

Delivery is at-least-once (acks_late), so a task may run twice after a worker
crash. Running it again is safe: image keys are deleted only after the result
is stored, and a task whose document is already final is not run again.
"""

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

import orjson
import redis
from redis.client import Pipeline

from common.contract import (
    FINAL_STATES,
    DetectionParams,
    ErrorCode,
    ImageError,
    done_key,
    encode_done,
    image_key,
    result_key,
    task_key,
)
from common.logs import request_id_var
from worker.models import FaceModels
from worker.pipeline import ChunkProcessor, StageTimer
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

FINISH_ATTEMPTS = 5

MARK_RUNNING_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
local attempts = 0
if state == 'queued' or state == 'running' then
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HSET', KEYS[1], 'state', 'running', 'done', 0, 'started_at', ARGV[1],
             'worker', ARGV[2])
end
return {state, attempts, redis.call('HGET', KEYS[1], 'kind')}
"""
"""Lua script: set a queued or running task to running; return its previous state, attempts
and kind.

A task found running was redelivered after its worker died, so its progress
starts again from 0 and `attempts` counts the starts, including this one.
The previous state is false (nil) for an expired task, and attempts is 0
unless the task was set to running.
"""


class SoftDeadline:
    """The soft time limit of one task run, checked between detector batches and chunks."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.started = time.monotonic()
        self.exceeded = False

    def check(self) -> bool:
        """Return whether the limit has passed, remembering it once it has."""
        if self.limit_s and time.monotonic() - self.started > self.limit_s:
            self.exceeded = True
        return self.exceeded


class CancellationCheck:
    """A cached answer to "was this task cancelled?", read from Redis at most once per interval.

    The first read comes one interval after the start, because the start itself
    confirmed the task was running. The pipeline calls `requested` between
    detector batches, so a running task stops within the interval plus one batch.
    """

    INTERVAL_S = 0.25

    def __init__(self, read_cancelled: Callable[[], bool]) -> None:
        self.read_cancelled = read_cancelled
        self.next_check = time.monotonic() + self.INTERVAL_S
        self.cancelled = False

    def requested(self) -> bool:
        if not self.cancelled and time.monotonic() >= self.next_check:
            self.cancelled = self.read_cancelled()
            self.next_check = time.monotonic() + self.INTERVAL_S
        return self.cancelled


def worker_name() -> str:
    """Return a name for this worker process that is unique across hosts."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TaskRunner:
    """Runs embedding tasks against one Redis and one set of loaded models."""

    def __init__(self, client: redis.Redis, models: FaceModels, settings: WorkerSettings):
        self.redis = client
        self.models = models
        self.settings = settings
        self.processor = ChunkProcessor(models, settings.max_faces_per_image)
        self.name = worker_name()

    def state(self, task_id: str) -> str | None:
        value: bytes | None = self.redis.hget(task_key(task_id), "state")  # type: ignore[assignment]
        return value.decode() if value is not None else None

    def run(self, task_id: str, image_count: int, params: DetectionParams, request_id: str) -> str:
        """Process one task end to end and return its final state."""
        token = request_id_var.set(request_id)
        try:
            return self._run(task_id, image_count, params)
        except redis.RedisError:
            # Without Redis the failure cannot be recorded; the broker redelivers
            # the unacknowledged task once the worker reconnects.
            logger.exception("Task %s lost its Redis connection", task_id)
            raise
        except Exception as error:
            logger.exception("Task %s failed", task_id)
            message = f"{type(error).__name__}: {error}"
            self.store_failure(task_id, image_count, "internal_error", message)
            return "failed"
        finally:
            request_id_var.reset(token)

    def _run(self, task_id: str, image_count: int, params: DetectionParams) -> str:
        state, attempts, kind = self._mark_running(task_id)
        if state is None:
            logger.warning(
                "Task %s has no document (expired or never created); dropping it", task_id
            )
            self._delete_images(task_id, image_count)
            return "missing"
        if state in FINAL_STATES:
            # A redelivery after the result was stored, or a task cancelled while queued.
            logger.info("Task %s is already %s; not running it again", task_id, state)
            self._delete_images(task_id, image_count)
            self._notify(task_id)
            return state

        max_attempts = self.settings.task_max_attempts
        if attempts > max_attempts:
            logger.error(
                "Task %s: its worker died in each of its %d starts (TASK_MAX_ATTEMPTS=%d); "
                "failing it", task_id, attempts - 1, max_attempts,
            )  # fmt: skip
            self.store_failure(
                task_id,
                image_count,
                "worker_lost",
                f"The task was started {attempts - 1} times (TASK_MAX_ATTEMPTS={max_attempts}) "
                "and its worker stopped each time before it finished, for example killed for "
                "memory; it is not retried again.",
            )
            return self.state(task_id) or "missing"
        logger.info(
            "Task %s started: %d images, params=%s, attempt %d", task_id, image_count, params,
            attempts,
        )  # fmt: skip

        deadline = SoftDeadline(self.settings.task_soft_time_limit)

        cancellation = CancellationCheck(lambda: self.state(task_id) == "cancelled")

        def should_stop() -> bool:
            return deadline.check() or cancellation.requested()

        timer = StageTimer()
        faces: list[list[dict[str, object]] | None] = []
        errors: list[ImageError] = []
        # Images decoded and detected, or failed; a stop mid-chunk leaves the rest None.
        processed = 0
        chunk = self.settings.chunk_images
        for first in range(0, image_count, chunk):
            if should_stop():
                break
            indexes = range(first, min(first + chunk, image_count))
            files = self._read_images(task_id, indexes)
            chunk_faces, chunk_errors = self.processor.process(
                files, first, params, timer, should_stop
            )
            faces.extend(chunk_faces)
            errors.extend(chunk_errors)
            chunk_processed = sum(item is not None for item in chunk_faces) + len(chunk_errors)
            processed += chunk_processed
            if indexes.stop < image_count:
                # The final write sets `done` for the last chunk.
                self.redis.hincrby(task_key(task_id), "done", chunk_processed)

        if deadline.exceeded:
            limit = self.settings.task_soft_time_limit
            logger.error(
                "Task %s exceeded TASK_SOFT_TIME_LIMIT (%g s) after %d of %d images",
                task_id, limit, processed, image_count,
            )  # fmt: skip
            self.store_failure(
                task_id,
                image_count,
                "time_limit_exceeded",
                f"The task ran longer than TASK_SOFT_TIME_LIMIT ({limit:g} s) and was stopped "
                f"after {processed} of {image_count} images; submit fewer images per task.",
            )
            return self.state(task_id) or "missing"

        stored = self._store_result(task_id, image_count, faces, errors, timer, kind == "sync")
        if not stored:
            final_state = self.state(task_id) or "missing"
            logger.info(
                "Task %s stopped after %d of %d images: it is %s",
                task_id,
                processed,
                image_count,
                final_state,
            )
            self._delete_images(task_id, image_count)
            self._notify(task_id)
            return final_state

        logger.info(
            "Task %s succeeded: %d images, %d faces, %d errors, stages_ms=%s",
            task_id,
            image_count,
            sum(len(item) for item in faces if item is not None),
            len(errors),
            {stage: round(value, 1) for stage, value in timer.totals.items()},
        )
        return "succeeded"

    def _mark_running(self, task_id: str) -> tuple[str | None, int, str | None]:
        """Set a queued task (or one redelivered after a crash) to running.

        Returns the state the task had before, the number of starts including
        this one (0 when the task was not queued or running, so it was left
        alone) and the task's kind. One Lua script, so a cancellation at the
        same moment is never overwritten.
        """
        previous, attempts, kind = self.redis.eval(
            MARK_RUNNING_SCRIPT, 1, task_key(task_id), time.time(), self.name
        )
        return (
            previous.decode() if previous else None,
            int(attempts),
            kind.decode() if kind else None,
        )

    def _finish(self, task_id: str, write: Callable[[Pipeline], object]) -> bool:
        """Run `write` in a MULTI/EXEC transaction if the task is still unfinished.

        WATCH makes the transaction fail when anyone changes the task hash
        between the state check and EXEC, so a cancellation is never
        overwritten by a final state. Returns whether `write` was applied.
        """
        key = task_key(task_id)
        with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(FINISH_ATTEMPTS):
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    if pipe.hget(key, "state") not in (b"queued", b"running"):
                        pipe.reset()
                        return False
                    pipe.multi()
                    write(pipe)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
        raise RuntimeError(f"task {task_id} changed during {FINISH_ATTEMPTS} attempts to finish it")

    def _read_images(self, task_id: str, indexes: Sequence[int]) -> list[bytes | None]:
        keys = [image_key(task_id, index) for index in indexes]
        values: list[bytes | None] = self.redis.mget(keys)  # type: ignore[assignment]
        return values

    def _store_result(
        self,
        task_id: str,
        image_count: int,
        faces: list[list[dict[str, object]] | None],
        errors: list[ImageError],
        timer: StageTimer,
        waiter_present: bool,
    ) -> bool:
        """Store the result, finish the task document, wake the waiter, drop the images.

        For a synchronous task, whose caller waits on the done list, the entry
        carries the outcome and the result, which saves the caller a read.

        One MULTI/EXEC transaction, so a reader sees either the running task or
        the finished one with its result, never half of it. Returns False, and
        stores nothing, when the task was cancelled or expired meanwhile.
        """
        ttl = self.settings.result_ttl
        body = orjson.dumps(faces, option=orjson.OPT_SERIALIZE_NUMPY)

        def write(pipe: Pipeline) -> None:
            pipe.set(result_key(task_id), body, ex=ttl)
            pipe.hset(
                task_key(task_id),
                mapping={
                    "state": "succeeded",
                    "done": image_count,
                    "finished_at": time.time(),
                    "errors": orjson.dumps(errors),
                    "timings_ms": orjson.dumps(timer.totals),
                },
            )
            pipe.expire(task_key(task_id), ttl)
            pipe.rpush(done_key(task_id), token)
            pipe.expire(done_key(task_id), ttl)
            pipe.delete(*[image_key(task_id, index) for index in range(image_count)])

        token = encode_done("succeeded", errors, body) if waiter_present else b"1"
        return self._finish(task_id, write)

    def store_failure(self, task_id: str, image_count: int, code: ErrorCode, message: str) -> None:
        """Mark the whole task failed with an error code and message, and wake the waiter.

        A task that was cancelled, finished or expired meanwhile keeps that state.
        The hard time limit's watchdog calls this from its own thread.
        """
        error: ImageError = {"index": None, "code": code, "message": message}
        ttl = self.settings.result_ttl

        def write(pipe: Pipeline) -> None:
            pipe.hset(
                task_key(task_id),
                mapping={
                    "state": "failed",
                    "finished_at": time.time(),
                    "errors": orjson.dumps([error]),
                },
            )
            pipe.expire(task_key(task_id), ttl)
            pipe.rpush(done_key(task_id), b"1")
            pipe.expire(done_key(task_id), ttl)

        if not self._finish(task_id, write):
            self._notify(task_id)
        self._delete_images(task_id, image_count)

    def _notify(self, task_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(done_key(task_id), b"1")
        pipe.expire(done_key(task_id), self.settings.result_ttl)
        pipe.execute()

    def _delete_images(self, task_id: str, image_count: int) -> None:
        if image_count:
            self.redis.delete(*[image_key(task_id, index) for index in range(image_count)])
