"""POST / and POST /upload: the synchronous routes. Send images, wait, get faces back."""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from api.body import read_body
from api.deps import QueueDep, SettingsDep
from api.images import CheckedImage, ImageInputError, check_image_bytes
from api.queue import TaskOutcome, TaskQueue
from api.schemas import (
    MAX_FACES_LIMIT,
    DetectRequest,
    FacePublic,
    MessageResponse,
    ValidationErrorResponse,
    json_request_body,
)
from api.settings import ApiSettings
from api.validation import ValidBatch, error_entry, parse_batch
from common.contract import DetectionParams, decode_done
from common.logs import request_id_var

logger = logging.getLogger(__name__)
router = APIRouter()

REQUEST_BODY = json_request_body(DetectRequest)

# Bodies up to this size are validated on the event loop: that takes well under
# a millisecond, less than the hop to a worker thread and back. Larger ones go
# to the thread pool, so a big batch never stalls other requests.
INLINE_PARSE_BYTES = 256 * 1024


async def read_batch(request: Request, settings: ApiSettings, max_images: int) -> ValidBatch:
    """Read the body with its size limit and validate it in a worker thread."""
    body = await read_body(request, settings.max_body_bytes)
    if len(body) <= INLINE_PARSE_BYTES:
        return parse_batch(
            body,
            max_images=max_images,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
        )
    return await run_in_threadpool(
        parse_batch,
        body,
        max_images=max_images,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
    )


def sync_responses(invalid_input: str) -> dict[int | str, dict[str, Any]]:
    """Return the error responses that both synchronous routes document."""
    return {
        413: {"model": MessageResponse, "description": "Request body over MAX_BODY_BYTES."},
        422: {"model": ValidationErrorResponse, "description": invalid_input},
        503: {
            "model": MessageResponse,
            "description": "Redis unreachable or MAX_QUEUE_DEPTH tasks waiting; retry after "
            "`Retry-After` seconds.",
        },
        504: {
            "model": MessageResponse,
            "description": "No worker answered within REQUEST_TIMEOUT, or the task ran past "
            "the workers' time limit.",
        },
    }


@router.post(
    "/",
    summary="Detect and embed faces, waiting for the result",
    response_model=list[list[FacePublic]],
    openapi_extra=REQUEST_BODY,
    responses=sync_responses("Invalid image or parameter."),
)
async def detect_faces(request: Request, queue: QueueDep, settings: SettingsDep) -> Response:
    """Return, per input image in order, its faces largest first with 512-value embeddings."""
    batch = await read_batch(request, settings, settings.max_images_per_request)
    return await detect_and_wait(queue, settings, batch.images, batch.params, "inputs")


@router.post(
    "/upload",
    summary="Detect and embed faces in uploaded files, waiting for the result",
    response_model=list[list[FacePublic]],
    responses=sync_responses("Invalid file or parameter."),
)
async def upload_faces(
    queue: QueueDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="Image files, one part each.")],
    max_faces: Annotated[
        int, Form(ge=0, le=MAX_FACES_LIMIT, description="0 returns all faces.")
    ] = 0,
    det_conf: Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.5,
    nms_thresh: Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.4,
) -> Response:
    """Take `multipart/form-data` with one `files` part per image; respond like POST /."""
    if len(files) > settings.max_images_per_request:
        raise RequestValidationError(
            [
                error_entry(
                    ("body", "files"),
                    "too_long",
                    f"{len(files)} files is over the limit of {settings.max_images_per_request} "
                    "per request; split the upload into smaller requests",
                )
            ]
        )

    contents = [await upload.read() for upload in files]
    images = await run_in_threadpool(check_files, contents, settings)
    params: DetectionParams = {
        "max_faces": max_faces,
        "det_conf": det_conf,
        "nms_thresh": nms_thresh,
    }
    return await detect_and_wait(queue, settings, images, params, "files")


def check_files(contents: list[bytes], settings: ApiSettings) -> list[CheckedImage]:
    """Check every uploaded file, or raise RequestValidationError naming each bad one."""
    images: list[CheckedImage] = []
    details: list[dict[str, Any]] = []
    for index, data in enumerate(contents):
        try:
            images.append(
                check_image_bytes(data, settings.max_image_bytes, settings.max_image_pixels)
            )
        except ImageInputError as error:
            details.append(
                error_entry(("body", "files", index), error.kind, f"File {index} {error.message}")
            )
    if details:
        raise RequestValidationError(details)
    return images


async def detect_and_wait(
    queue: TaskQueue,
    settings: ApiSettings,
    images: list[CheckedImage],
    params: DetectionParams,
    field: str,
) -> Response:
    """Queue one synchronous task, wait for it and return its faces as the response body.

    `field` names the request field that held the images, for 422 locations.
    """
    task_id = await queue.submit(images, params, request_id_var.get(), kind="sync")

    entry = await queue.wait(task_id, settings.request_timeout)
    if entry is None:
        # No caller waits for this task any more, so a worker that picks it up later skips it.
        await queue.cancel_if_unfinished(task_id)
        logger.warning(
            "Task %s timed out: no worker finished it within %.0f s",
            task_id,
            settings.request_timeout,
        )
        raise HTTPException(
            504,
            f"No worker answered within {settings.request_timeout:.0f} s (REQUEST_TIMEOUT). "
            "Check that workers are running (GET /ready), or submit large batches to "
            "POST /tasks and poll.",
        )

    carried = decode_done(entry)
    outcome = (
        TaskOutcome(carried.state, carried.errors, carried.faces_json)
        if carried is not None
        else await queue.outcome(task_id)
    )
    image_errors = [error for error in outcome.errors if error["index"] is not None]
    if outcome.state == "succeeded" and image_errors:
        noun = "Image" if field == "inputs" else "File"
        raise RequestValidationError(
            [
                error_entry(
                    ("body", field, error["index"]),
                    error["code"],
                    f"{noun} {error['index']}: {error['message']}",
                )
                for error in image_errors
                if error["index"] is not None
            ]
        )
    if outcome.state == "failed" and any(
        error["code"] == "time_limit_exceeded" for error in outcome.errors
    ):
        logger.warning("Task %s ended by a time limit", task_id)
        raise HTTPException(504, outcome.errors[0]["message"])
    if outcome.state != "succeeded" or outcome.faces_json is None:
        reasons = "; ".join(error["message"] for error in outcome.errors) or outcome.state
        logger.error("Task %s ended %s: %s", task_id, outcome.state, reasons)
        raise HTTPException(500, f"Task {task_id} ended {outcome.state}: {reasons}")

    return Response(outcome.faces_json, media_type="application/json")
