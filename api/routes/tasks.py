"""Asynchronous tasks: submit a batch, poll its progress and result, cancel it.

State lives in Redis only (the task hash written at submission is the record
of issued ids), so any API process can serve any task. Celery is never
asked about a task: it reports every unknown id as pending.
"""

import hashlib
import logging
import re
import uuid
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from redis.typing import EncodableT, FieldT
from starlette.concurrency import run_in_threadpool

from api.body import read_body
from api.deps import QueueDep, SettingsDep
from api.queue import TaskQueue
from api.schemas import MessageResponse, ValidationErrorResponse, json_request_body
from api.task_models import TaskAccepted, TaskDocument, TaskRequest
from api.validation import ValidBatch, error_entry, parse_batch
from common.contract import FINAL_STATES, task_key
from common.logs import request_id_var
from common.task_document import CALLBACK_FIELD, TASK_KIND, dump_task_document, task_document

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/tasks", tags=["tasks"])

TASK_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
JSON = "application/json"

REQUEST_BODY = json_request_body(TaskRequest)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": MessageResponse, "description": "Unknown task id, or its record expired."}
}


def check_callback_url(url: str, allowed_hosts: frozenset[str]) -> None:
    """Raise ValueError unless `url` is an http(s) URL whose host is in `allowed_hosts`."""
    if not allowed_hosts:
        raise ValueError(
            "Webhooks are disabled on this server because WEBHOOK_ALLOWED_HOSTS is empty; "
            "omit callback_url and poll status_url instead."
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"callback_url must be an http or https URL, got {url!r}.")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"callback_url has an invalid port: {url!r}.") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"callback_url has no host: {url!r}.")
    if host not in allowed_hosts:
        raise ValueError(
            f"The host {host!r} of callback_url is not in WEBHOOK_ALLOWED_HOSTS; "
            "use an allowed host or ask the operator to add this one."
        )


def request_fingerprint(batch: ValidBatch, callback_url: str | None) -> str:
    """Return a SHA-256 hex digest of what a submission requests.

    It covers the decoded image bytes, not their base64 text, so a client that
    re-encodes the same files (other line breaks, a data-URL prefix) still
    matches its earlier submission.
    """
    digest = hashlib.sha256()
    digest.update(orjson.dumps(batch.params, option=orjson.OPT_SORT_KEYS))
    digest.update(orjson.dumps(callback_url))
    for image in batch.images:
        digest.update(hashlib.sha256(image.data).digest())
    return digest.hexdigest()


def accepted(task_id: str, replayed: bool = False) -> Response:
    status_url = f"/tasks/{task_id}"
    headers = {"Location": status_url}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    body = orjson.dumps({"task_id": task_id, "status_url": status_url})
    return Response(body, status_code=202, media_type=JSON, headers=headers)


def task_not_found(task_id: str) -> HTTPException:
    return HTTPException(
        404,
        f"Task {task_id!r} not found: the id was never issued, or the task expired "
        "(tasks are kept RESULT_TTL seconds).",
    )


async def read_task_document(queue: TaskQueue, task_id: str) -> dict[str, Any]:
    """Return the task document of an asynchronous task, or raise 404."""
    if not TASK_ID_PATTERN.match(task_id):
        raise task_not_found(task_id)
    stored = await queue.read_task(task_id)
    if stored is None or stored[0].get(b"kind") != TASK_KIND.encode():
        raise task_not_found(task_id)
    fields, result = stored
    return task_document(task_id, fields, result)


async def replay_submission(queue: TaskQueue, record: bytes, fingerprint: str) -> Response:
    """Return the response to a submission whose Idempotency-Key was used before."""
    first = orjson.loads(record)
    if first["fingerprint"] != fingerprint:
        raise RequestValidationError(
            [
                error_entry(
                    ("header", "Idempotency-Key"),
                    "idempotency_key_reused",
                    "This Idempotency-Key was already used with a different request body; "
                    "send a new key for a new request.",
                )
            ]
        )
    task_id: str = first["task_id"]
    if not await queue.redis.exists(task_key(task_id)):
        raise HTTPException(
            409,
            "A request with this Idempotency-Key is still being submitted; retry shortly.",
            headers={"Retry-After": "1"},
        )
    logger.info("Idempotent replay of task %s", task_id)
    return accepted(task_id, replayed=True)


@router.post(
    "",
    status_code=202,
    summary="Submit a batch of images as an asynchronous task",
    response_model=TaskAccepted,
    openapi_extra=REQUEST_BODY,
    responses={
        202: {
            "description": "Task queued, or an earlier submission with the same "
            "Idempotency-Key (then `Idempotent-Replayed: true`). `Location` is the status URL."
        },
        409: {
            "model": MessageResponse,
            "description": "The first request with this Idempotency-Key is still being "
            "submitted; retry after `Retry-After` seconds.",
        },
        413: {"model": MessageResponse, "description": "Request body over MAX_BODY_BYTES."},
        422: {
            "model": ValidationErrorResponse,
            "description": "Invalid image or parameter, a callback_url whose host is not "
            "allowed, or an Idempotency-Key reused with a different body.",
        },
        503: {
            "model": MessageResponse,
            "description": "Redis unreachable or MAX_QUEUE_DEPTH tasks waiting; retry after "
            "`Retry-After` seconds.",
        },
    },
)
async def submit_task(
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Any string of 1 to 255 characters; an empty key is rejected, because "
            "every client that sent one would share it. A retry with the same key and the "
            "same body within RESULT_TTL seconds returns the first task instead of a new one.",
        ),
    ] = None,
) -> Response:
    """Queue the images for the workers and return the task id at once (202).

    Poll `status_url` for progress and the result, or pass `callback_url` to
    get the task document by POST when the task reaches a final state.
    """
    body = await read_body(request, settings.max_body_bytes)
    batch = await run_in_threadpool(
        parse_batch,
        body,
        max_images=settings.max_images_per_task,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        model=TaskRequest,
    )
    callback_url = cast(TaskRequest, batch.request).callback_url
    if callback_url is not None:
        try:
            check_callback_url(callback_url, settings.webhook_allowed_hosts)
        except ValueError as error:
            raise RequestValidationError(
                [error_entry(("body", "callback_url"), "value_error", str(error))]
            ) from None

    task_id = uuid.uuid4().hex
    key_digest = None
    if idempotency_key is not None:
        key_digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        fingerprint = await run_in_threadpool(request_fingerprint, batch, callback_url)
        record = orjson.dumps({"task_id": task_id, "fingerprint": fingerprint})
        first = await queue.claim_idempotency_key(key_digest, record)
        if first is not None:
            return await replay_submission(queue, first, fingerprint)

    extra: dict[FieldT, EncodableT] = {}
    if callback_url is not None:
        extra[CALLBACK_FIELD] = callback_url
    try:
        await queue.submit(
            batch.images,
            batch.params,
            request_id_var.get(),
            kind=TASK_KIND,
            extra=extra,
            task_id=task_id,
        )
    except BaseException:
        if key_digest is not None:
            await queue.release_idempotency_key(key_digest)
        raise
    return accepted(task_id)


@router.get(
    "/{task_id}",
    summary="Read a task's state, progress and result",
    response_model=TaskDocument,
    responses=NOT_FOUND,
)
async def get_task(task_id: str, queue: QueueDep) -> Response:
    """Return the task document; `result` is set once `state` is `succeeded`."""
    document = await read_task_document(queue, task_id)
    return Response(dump_task_document(document), media_type=JSON)


@router.delete(
    "/{task_id}",
    summary="Cancel a queued or running task",
    response_model=TaskDocument,
    responses={
        200: {"description": "The task was queued; it is cancelled and will never run."},
        202: {
            "description": "The task was running; it is marked cancelled and its worker "
            "stops at the next image boundary, so `progress.done` may still rise."
        },
        409: {"model": MessageResponse, "description": "The task already reached a final state."},
        **NOT_FOUND,
    },
)
async def cancel_task(task_id: str, queue: QueueDep) -> Response:
    """Cancel the task and return its document with state `cancelled`.

    Its result, if any was in progress, is discarded. A webhook fires once for
    the cancelled task: sent from here for a queued task, and by the worker
    after it stops for a running one.
    """
    if not TASK_ID_PATTERN.match(task_id):
        raise task_not_found(task_id)
    previous = await queue.cancel(task_id, "Cancelled by a DELETE request.", kind=TASK_KIND)
    if previous is None:
        raise task_not_found(task_id)
    if previous in FINAL_STATES:
        raise HTTPException(
            409,
            f"Task {task_id} is already {previous}; only queued or running tasks can be cancelled.",
        )

    logger.info("Task %s cancelled while %s", task_id, previous)
    if previous == "queued":
        await queue.enqueue_webhook(task_id)
    document = await read_task_document(queue, task_id)
    status = 200 if previous == "queued" else 202
    return Response(dump_task_document(document), status_code=status, media_type=JSON)
