"""Request and response models of the HTTP API; they also produce the OpenAPI schema."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]

T1_EXAMPLE = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0a..."


class DetectRequest(BaseModel):
    """A batch of base64 images and the detector settings for all of them."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"inputs": [T1_EXAMPLE], "max_faces": 0, "det_conf": 0.5, "nms_thresh": 0.4}
            ]
        },
    )

    inputs: list[str] = Field(
        min_length=1,
        description="Base64 image files (JPEG, PNG, WebP, BMP, TIFF, GIF). A data-URL "
        "prefix, line breaks, missing padding and the URL-safe alphabet are accepted.",
    )
    max_faces: int = Field(
        default=0, ge=0, description="Faces returned per image, largest first; 0 returns all."
    )
    det_conf: Probability = Field(default=0.5, description="Detector score threshold.")
    nms_thresh: Probability = Field(
        default=0.4, description="IoU above which the weaker of two overlapping boxes is dropped."
    )


class FacePublic(BaseModel):
    """One detected face, in pixels of the image as a viewer shows it."""

    bbox: list[float] = Field(
        min_length=4, max_length=4, description="[x1, y1, x2, y2], clipped to the image."
    )
    kps: list[list[float]] = Field(
        min_length=5,
        max_length=5,
        description="Five landmarks [x, y]: left eye, right eye, nose, left and right mouth "
        "corner. Not clipped.",
    )
    det_score: float = Field(description="Detector confidence in [0, 1].")
    embedding: list[float] = Field(
        min_length=512,
        max_length=512,
        description="ArcFace embedding, L2-normalised: cosine similarity is a dot product.",
    )


class ErrorDetail(BaseModel):
    """One validation error in FastAPI's shape."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """Body of a 422 response: which input or parameter is wrong, and why."""

    detail: list[ErrorDetail]


class MessageResponse(BaseModel):
    """Body of 413, 503 and 504 responses."""

    detail: str
