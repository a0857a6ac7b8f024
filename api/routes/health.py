"""Operations routes: liveness, readiness, live workers and Prometheus metrics."""

import logging
from typing import Any

import orjson
import redis.exceptions
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api import __version__
from api.deps import QueueDep
from api.metrics import LIVE_WORKERS, QUEUE_DEPTH, render_metrics
from api.queue import TaskQueue
from common.contract import QUEUE_NAME, WORKER_KEY_PATTERN

logger = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class WorkerInfo(BaseModel):
    """A live worker, from its heartbeat."""

    model_config = {"extra": "allow"}

    name: str = Field(description="host:pid of the worker process.")
    model_pack: str
    detector: str
    recognizer: str
    provider: str = Field(description="The execution provider its sessions run on.")
    threads: int
    det_size: list[int]
    onnxruntime: str | None
    insightface: str | None
    beat_at: float = Field(description="Unix time of the last heartbeat.")


class ReadyResponse(BaseModel):
    """Readiness: Redis reachable and at least one worker with loaded models."""

    ready: bool
    redis: bool
    workers: list[WorkerInfo]
    reason: str | None = None


class InfoResponse(BaseModel):
    """The service's version, queue depth and live workers."""

    version: str
    queue_depth: int
    workers: list[WorkerInfo]


async def live_workers(queue: TaskQueue) -> list[dict[str, Any]]:
    """Return the heartbeats of all workers whose key has not expired."""
    keys = [key async for key in queue.redis.scan_iter(match=WORKER_KEY_PATTERN, count=100)]
    beats = await queue.redis.mget(keys) if keys else []
    workers = [orjson.loads(beat) for beat in beats if beat]
    return sorted(workers, key=lambda worker: str(worker.get("name")))


def not_ready(reason: str, redis_ok: bool) -> JSONResponse:
    return JSONResponse(
        {"ready": False, "redis": redis_ok, "workers": [], "reason": reason},
        status_code=503,
        headers={"Retry-After": "5"},
    )


@router.api_route("/health", methods=["GET", "HEAD"], summary="The API process is alive")
async def health() -> dict[str, str]:
    """Return 200 while the API process serves requests; checks nothing else."""
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Redis is reachable and a worker has its models loaded",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready; see `reason`."}},
)
async def ready(queue: QueueDep) -> JSONResponse:
    """Return 200 when Redis replies and at least one worker heartbeat is fresh, else 503."""
    try:
        await queue.redis.ping()
        workers = await live_workers(queue)
    except REDIS_ERRORS as error:
        logger.warning("Readiness check: Redis unreachable: %s", error)
        return not_ready(f"Redis unreachable: {error}", redis_ok=False)

    if not workers:
        return not_ready("no worker heartbeat: start a worker or check its log", redis_ok=True)
    return JSONResponse({"ready": True, "redis": True, "workers": workers})


@router.get("/info", summary="Live workers and what each runs", response_model=InfoResponse)
async def info(queue: QueueDep) -> dict[str, Any]:
    """Return the API version, the queue depth and every live worker's heartbeat."""
    return {
        "version": __version__,
        "queue_depth": await queue.redis.llen(QUEUE_NAME),
        "workers": await live_workers(queue),
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics of this API process",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(queue: QueueDep) -> Response:
    """Return the API's metrics; queue depth and live workers are read from Redis now.

    Worker metrics (stage times, batch sizes, images and faces) are served by
    each worker on its own port (WORKER_METRICS_PORT).
    """
    try:
        QUEUE_DEPTH.set(await queue.redis.llen(QUEUE_NAME))
        LIVE_WORKERS.set(len(await live_workers(queue)))
    except REDIS_ERRORS as error:
        logger.warning("Metrics: Redis unreachable, queue depth not updated: %s", error)
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)
