"""Parse and validate a request body into detector parameters and checked images.

Runs in a worker thread: JSON parsing, base64 decoding and header reads of a
large batch take long enough to stall every other request if they ran on the
event loop. Errors come out as FastAPI's RequestValidationError, so they reach
the client as a 422 in FastAPI's own shape.
"""

from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.images import CheckedImage, ImageInputError, check_image
from api.schemas import DetectRequest
from common.contract import DetectionParams


@dataclass
class ValidBatch:
    """A validated request: its parameters and the checked image files."""

    request: DetectRequest
    images: list[CheckedImage]

    @property
    def params(self) -> DetectionParams:
        return self.request.effective_params()


def error_entry(loc: tuple[str | int, ...], kind: str, message: str) -> dict[str, Any]:
    """Build one entry of a 422 `detail` list."""
    return {"type": kind, "loc": list(loc), "msg": message}


def parse_batch(
    body: bytes,
    *,
    max_images: int,
    max_image_bytes: int,
    max_image_pixels: int,
    model: type[DetectRequest] = DetectRequest,
) -> ValidBatch:
    """Return the validated batch, or raise RequestValidationError listing every problem.

    `model` may be a subclass of DetectRequest with more fields, such as the
    task request's callback URL.
    """
    try:
        request = model.model_validate_json(body)
    except ValidationError as error:
        details = [
            error_entry(("body", *item["loc"]), item["type"], item["msg"])
            for item in error.errors(include_url=False, include_input=False)
        ]
        raise RequestValidationError(details) from None

    if len(request.inputs) > max_images:
        raise RequestValidationError(
            [
                error_entry(
                    ("body", "inputs"),
                    "too_long",
                    f"{len(request.inputs)} images is over the limit of {max_images} per "
                    "request; split the batch into smaller requests",
                )
            ]
        )

    images: list[CheckedImage] = []
    image_details: list[dict[str, Any]] = []
    for index, text in enumerate(request.inputs):
        try:
            images.append(check_image(text, max_image_bytes, max_image_pixels))
        except ImageInputError as error:
            image_details.append(
                error_entry(("body", "inputs", index), error.kind, f"Image {index} {error.message}")
            )
    if image_details:
        raise RequestValidationError(image_details)
    return ValidBatch(request, images)
