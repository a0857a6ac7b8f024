"""Request and response models of the asynchronous task routes, for validation and OpenAPI."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import T1_EXAMPLE, DetectRequest, FacePublic

TASK_ID_EXAMPLE = "3f2c1d0e9b8a47c6a5d4e3f2a1b0c9d8"


class TaskRequest(DetectRequest):
    """The body of POST /: images and detector settings, plus an optional webhook URL."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "inputs": [T1_EXAMPLE],
                    "max_faces": 0,
                    "det_conf": 0.5,
                    "nms_thresh": 0.4,
                    "callback_url": "https://hooks.example.com/eventsnap",
                }
            ]
        },
    )

    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="http or https URL that receives the task document by POST when the "
        "task reaches a final state. Its host must be listed in WEBHOOK_ALLOWED_HOSTS.",
    )


class TaskAccepted(BaseModel):
    """Body of a 202 response to POST /tasks."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"task_id": TASK_ID_EXAMPLE, "status_url": f"/tasks/{TASK_ID_EXAMPLE}"}]
        }
    )

    task_id: str = Field(description="32 lower-case hex digits.")
    status_url: str = Field(description="Path to poll with GET; also sent as `Location`.")


class TaskProgress(BaseModel):
    """Images finished so far and images in the task."""

    done: int
    total: int


class TaskError(BaseModel):
    """A failure of one image (`index` set) or of the whole task (`index` null)."""

    index: int | None
    code: Literal[
        "image_decode_failed", "image_missing", "cancelled", "time_limit_exceeded", "internal_error"
    ]
    message: str


class TaskDocument(BaseModel):
    """State, progress and result of an asynchronous task."""

    task_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: TaskProgress
    result: list[list[FacePublic] | None] | None = Field(
        description="Set only when `state` is `succeeded`: one list of faces per input "
        "image, as POST / returns them, with null for an image listed in `errors`."
    )
    errors: list[TaskError]
    created_at: str = Field(description="ISO 8601 UTC time of submission.")
    started_at: str | None = Field(description="When a worker started the task, or null.")
    finished_at: str | None = Field(
        description="When the task reached a final state (cancelled included), or null."
    )
