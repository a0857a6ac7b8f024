"""Synchronous and asynchronous clients of the Eventsnap Inference HTTP API."""

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any, cast

import httpx

from eventsnap_client.errors import (
    ERRORS_BY_STATUS,
    ApiError,
    RequestFailedError,
    TaskTimeoutError,
)
from eventsnap_client.images import ImageInput, encode_images
from eventsnap_client.models import FINAL_STATES, Face, TaskDocument
from eventsnap_client.retry import RetryPolicy

logger = logging.getLogger("eventsnap_client")

DEFAULT_URL = "http://127.0.0.1:5000"
# POST / waits for a worker for up to the server's REQUEST_TIMEOUT (60 s by
# default) before it returns 504, so the read timeout must be longer.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


def detect_body(
    inputs: list[str], max_faces: int, det_conf: float, nms_thresh: float
) -> dict[str, Any]:
    return {
        "inputs": inputs,
        "max_faces": max_faces,
        "det_conf": det_conf,
        "nms_thresh": nms_thresh,
    }


def client_headers(api_key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    merged = {"Accept": "application/json", **(headers or {})}
    if api_key:
        merged["Authorization"] = f"Bearer {api_key}"
    return merged


def error_for(response: httpx.Response) -> ApiError:
    """Build the exception for an error response, carrying the server's `detail`."""
    try:
        body = response.json()
    except ValueError:
        detail: Any = response.text or response.reason_phrase
    else:
        detail = body.get("detail", body) if isinstance(body, dict) else body
    error_class = ERRORS_BY_STATUS.get(response.status_code, ApiError)
    return error_class(response.status_code, detail, response.headers.get("X-Request-ID"))


def checked_json(response: httpx.Response) -> Any:
    """Return the JSON body of a 2xx response, or raise the matching ApiError."""
    if response.is_success:
        return response.json()
    raise error_for(response)


def log_retry(method: str, url: str, attempt: int, reason: str, delay: float) -> None:
    logger.warning(
        "%s %s attempt %d failed (%s); retrying in %.2f s", method, url, attempt, reason, delay
    )


def request_failed(method: str, url: str, attempt: int, error: httpx.TransportError) -> Exception:
    message = f"{method} {url} got no response after {attempt} attempt(s): {error!r}"
    return RequestFailedError(message)


def task_path(task_id: str) -> str:
    return f"/tasks/{task_id}"


class EventsnapClient:
    """A blocking client. Use it as a context manager, or call `close()`.

    Requests that get a 503 or fail to connect are retried as the `retry`
    policy sets. Other error statuses raise an ApiError subclass at once. `api_key` is sent
    as `Authorization: Bearer <key>`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, headers=client_headers(api_key, headers)
        )

    def __enter__(self) -> "EventsnapClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        """Send a request with retries and return the JSON body of its 2xx response."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, json=json, headers=headers)
            except httpx.TransportError as error:
                delay = self.retry.delay_after_error(attempt, error)
                if delay is None:
                    raise request_failed(method, path, attempt, error) from error
                log_retry(method, path, attempt, repr(error), delay)
                time.sleep(delay)
                continue
            delay = self.retry.delay_after_response(attempt, response)
            if delay is None:
                return checked_json(response)
            log_retry(method, path, attempt, f"HTTP {response.status_code}", delay)
            time.sleep(delay)

    def detect(
        self,
        images: Iterable[ImageInput],
        *,
        max_faces: int = 0,
        det_conf: float = 0.5,
        nms_thresh: float = 0.4,
    ) -> list[list[Face]]:
        """Detect and embed faces with POST / and return one list of faces per image, in order.

        Raises InvalidInputError (422) naming the index of a rejected image.
        """
        body = detect_body(encode_images(images), max_faces, det_conf, nms_thresh)
        return cast(list[list[Face]], self.request("POST", "/", json=body))

    def submit(
        self,
        images: Iterable[ImageInput],
        *,
        max_faces: int = 0,
        det_conf: float = 0.5,
        nms_thresh: float = 0.4,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Queue the images as an asynchronous task with POST /tasks and return its id.

        Without `idempotency_key` a random one is sent, so that a retry after a
        lost response returns the same task instead of queueing a second one.
        """
        body = detect_body(encode_images(images), max_faces, det_conf, nms_thresh)
        if callback_url is not None:
            body["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        accepted = self.request("POST", "/tasks", json=body, headers=headers)
        return cast(str, accepted["task_id"])

    def get_task(self, task_id: str) -> TaskDocument:
        """Return the task's document, or raise NotFoundError for an unknown or expired id."""
        return cast(TaskDocument, self.request("GET", task_path(task_id)))

    def wait(
        self, task_id: str, *, poll_interval: float = 1.0, timeout: float | None = 600.0
    ) -> TaskDocument:
        """Poll the task until it is succeeded, failed or cancelled, and return its document.

        Raises TaskTimeoutError when `timeout` seconds pass first (None waits
        without limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            document = self.get_task(task_id)
            if document["state"] in FINAL_STATES:
                return document
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise TaskTimeoutError(task_id, cast(float, timeout), document["state"])
            time.sleep(poll_interval)

    def cancel(self, task_id: str) -> TaskDocument:
        """Cancel a queued or running task and return its document (state `cancelled`).

        Raises ConflictError when the task already reached a final state.
        """
        return cast(TaskDocument, self.request("DELETE", task_path(task_id)))


class AsyncEventsnapClient:
    """The asyncio counterpart of EventsnapClient, with the same methods as coroutines.

    Images are read and base64-encoded in a worker thread, so large files do
    not block the event loop.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=client_headers(api_key, headers)
        )

    async def __aenter__(self) -> "AsyncEventsnapClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        """Send a request with retries and return the JSON body of its 2xx response."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, json=json, headers=headers)
            except httpx.TransportError as error:
                delay = self.retry.delay_after_error(attempt, error)
                if delay is None:
                    raise request_failed(method, path, attempt, error) from error
                log_retry(method, path, attempt, repr(error), delay)
                await asyncio.sleep(delay)
                continue
            delay = self.retry.delay_after_response(attempt, response)
            if delay is None:
                return checked_json(response)
            log_retry(method, path, attempt, f"HTTP {response.status_code}", delay)
            await asyncio.sleep(delay)

    async def detect(
        self,
        images: Iterable[ImageInput],
        *,
        max_faces: int = 0,
        det_conf: float = 0.5,
        nms_thresh: float = 0.4,
    ) -> list[list[Face]]:
        """Detect and embed faces with POST / and return one list of faces per image, in order."""
        inputs = await asyncio.to_thread(encode_images, images)
        body = detect_body(inputs, max_faces, det_conf, nms_thresh)
        return cast(list[list[Face]], await self.request("POST", "/", json=body))

    async def submit(
        self,
        images: Iterable[ImageInput],
        *,
        max_faces: int = 0,
        det_conf: float = 0.5,
        nms_thresh: float = 0.4,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Queue the images as an asynchronous task with POST /tasks and return its id."""
        inputs = await asyncio.to_thread(encode_images, images)
        body = detect_body(inputs, max_faces, det_conf, nms_thresh)
        if callback_url is not None:
            body["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        accepted = await self.request("POST", "/tasks", json=body, headers=headers)
        return cast(str, accepted["task_id"])

    async def get_task(self, task_id: str) -> TaskDocument:
        """Return the task's document, or raise NotFoundError for an unknown or expired id."""
        return cast(TaskDocument, await self.request("GET", task_path(task_id)))

    async def wait(
        self, task_id: str, *, poll_interval: float = 1.0, timeout: float | None = 600.0
    ) -> TaskDocument:
        """Poll the task until it is succeeded, failed or cancelled, and return its document."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            document = await self.get_task(task_id)
            if document["state"] in FINAL_STATES:
                return document
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise TaskTimeoutError(task_id, cast(float, timeout), document["state"])
            await asyncio.sleep(poll_interval)

    async def cancel(self, task_id: str) -> TaskDocument:
        """Cancel a queued or running task and return its document (state `cancelled`)."""
        return cast(TaskDocument, await self.request("DELETE", task_path(task_id)))
