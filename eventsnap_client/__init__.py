"""Python client of the Eventsnap Inference face service.

from pathlib import Path
from eventsnap_client import EventsnapClient

with EventsnapClient("http://127.0.0.1:5000") as client:
    faces = client.detect([Path("group.jpg")])[0]
"""

from eventsnap_client.client import DEFAULT_URL, AsyncEventsnapClient, EventsnapClient
from eventsnap_client.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    EventsnapError,
    GatewayTimeoutError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    RequestFailedError,
    ServiceUnavailableError,
    TaskTimeoutError,
)
from eventsnap_client.images import ImageInput, encode_image
from eventsnap_client.models import Face, TaskDocument, TaskError, TaskProgress, TaskState
from eventsnap_client.retry import RetryPolicy

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncEventsnapClient",
    "AuthenticationError",
    "ConflictError",
    "EventsnapClient",
    "EventsnapError",
    "Face",
    "GatewayTimeoutError",
    "ImageInput",
    "InvalidInputError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestFailedError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "TaskDocument",
    "TaskError",
    "TaskProgress",
    "TaskState",
    "TaskTimeoutError",
    "encode_image",
]
