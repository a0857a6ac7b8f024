"""Request and response models of the HTTP API; they also produce the OpenAPI schema."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from common.contract import DetectionParams

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
# The largest max_faces accepted. Larger integers do not fit the 64-bit
# integers that orjson writes and NumPy indexes with, and no image has more faces.
MAX_FACES_LIMIT = 2**31 - 1

T1_EXAMPLE = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0a..."


class DetectParameters(BaseModel):
    """Detector settings in the serverless-endpoint shape: `{"inputs", "parameters": {...}}`."""

    model_config = ConfigDict(extra="ignore")

    max_faces: int | None = Field(default=None, ge=0, le=MAX_FACES_LIMIT)
    det_conf: Probability | None = None
    nms_thresh: Probability | None = None


class DetectRequest(BaseModel):
    """A batch of base64 images and the detector settings for all of them.

    The settings may also come nested under `parameters`, the shape serverless
    inference endpoints use; a value there wins over the same top-level field.
    """

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
        default=0,
        ge=0,
        le=MAX_FACES_LIMIT,
        description="Faces returned per image, largest first; 0 returns all.",
    )
    det_conf: Probability = Field(default=0.5, description="Detector score threshold.")
    nms_thresh: Probability = Field(
        default=0.4, description="IoU above which the weaker of two overlapping boxes is dropped."
    )
    parameters: DetectParameters | None = Field(
        default=None,
        description="The same three settings, nested, for callers that use the serverless "
        "`{inputs, parameters}` shape.",
    )

    def effective_params(self) -> DetectionParams:
        """Return the detector settings, with values under `parameters` taking precedence."""
        nested = self.parameters or DetectParameters()
        return {
            "max_faces": self.max_faces if nested.max_faces is None else nested.max_faces,
            "det_conf": self.det_conf if nested.det_conf is None else nested.det_conf,
            "nms_thresh": self.nms_thresh if nested.nms_thresh is None else nested.nms_thresh,
        }


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


def inline_refs(node: Any, definitions: dict[str, Any]) -> Any:
    """Replace every `{"$ref": "#/$defs/Name"}` in a JSON schema with the definition itself."""
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return inline_refs(definitions[reference.removeprefix("#/$defs/")], definitions)
        return {key: inline_refs(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [inline_refs(item, definitions) for item in node]
    return node


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """Return an `openapi_extra` request body for a route that parses its JSON body itself.

    Pydantic puts nested models under `$defs`, which the OpenAPI document does
    not carry, so they are inlined.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_refs(schema, definitions)}},
        }
    }
