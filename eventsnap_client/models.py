"""Shapes of the service's JSON responses, for type checkers."""

from typing import Literal, TypedDict

TaskState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Face(TypedDict):
    """One face, in pixels of the image as a viewer shows it (EXIF orientation applied)."""

    bbox: list[float]
    kps: list[list[float]]
    det_score: float
    embedding: list[float]


class TaskProgress(TypedDict):
    """Images finished so far and images in the task."""

    done: int
    total: int


class TaskError(TypedDict):
    """A failure of one image (`index` set) or of the whole task (`index` None)."""

    index: int | None
    code: str
    message: str


class TaskDocument(TypedDict):
    """State, progress and result of an asynchronous task, as GET /tasks/{id} returns it."""

    task_id: str
    state: TaskState
    progress: TaskProgress
    result: list[list[Face] | None] | None
    errors: list[TaskError]
    created_at: str
    started_at: str | None
    finished_at: str | None
