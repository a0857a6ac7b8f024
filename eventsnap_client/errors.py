"""Exceptions raised by the client."""

from typing import Any


class EventsnapError(Exception):
    """Base class of every error this package raises."""


class RequestFailedError(EventsnapError):
    """No HTTP response on the last attempt: connection refused or broken, or a timeout."""


class TaskTimeoutError(EventsnapError, TimeoutError):
    """A task did not reach a final state within the time `wait` was given."""

    def __init__(self, task_id: str, timeout: float, state: str) -> None:
        super().__init__(
            f"Task {task_id} is still {state} after {timeout:g} s; call wait() again "
            "with a longer timeout, or cancel() it."
        )
        self.task_id = task_id
        self.state = state


class ApiError(EventsnapError):
    """The service returned an error status.

    `detail` is the `detail` field of the JSON body (a string, or a list of
    validation errors for 422), or the raw body text when it is not JSON.
    """

    def __init__(self, status_code: int, detail: Any, request_id: str | None = None) -> None:
        self.status_code = status_code
        self.detail = detail
        self.request_id = request_id
        super().__init__(self._message())

    def _message(self) -> str:
        suffix = f" (request id {self.request_id})" if self.request_id else ""
        return f"HTTP {self.status_code}: {self.detail}{suffix}"


class InvalidInputError(ApiError):
    """422: an image or a parameter is invalid. `errors` lists FastAPI's error entries."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        if isinstance(self.detail, list):
            return [entry for entry in self.detail if isinstance(entry, dict)]
        return []

    @property
    def input_indexes(self) -> list[int]:
        """Indexes of the rejected images: those named by `loc = ["body", "inputs", i]`."""
        indexes = set()
        for entry in self.errors:
            loc = entry.get("loc", [])
            if len(loc) >= 3 and loc[:2] == ["body", "inputs"] and isinstance(loc[2], int):
                indexes.add(loc[2])
        return sorted(indexes)

    def _message(self) -> str:
        if not self.errors:
            return super()._message()
        reasons = "; ".join(
            f"{'.'.join(str(part) for part in entry.get('loc', []))}: {entry.get('msg')}"
            for entry in self.errors
        )
        return f"HTTP 422: {reasons}"


class AuthenticationError(ApiError):
    """401 or 403: the API key is missing, invalid or not allowed this request."""


class NotFoundError(ApiError):
    """404: unknown task id, or its record expired."""


class ConflictError(ApiError):
    """409: the task to cancel is already final, or an idempotent submission is in flight."""


class PayloadTooLargeError(ApiError):
    """413: the request body is over the server's MAX_BODY_BYTES, so send fewer images."""


class ServiceUnavailableError(ApiError):
    """503 on every attempt: Redis unreachable or the queue full."""


class GatewayTimeoutError(ApiError):
    """504: no worker returned a result within the server's REQUEST_TIMEOUT."""


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidInputError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}
