"""Liveness and readiness probes."""

import orjson
import redis.exceptions
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import QueueDep
from common.contract import WORKER_KEY_PATTERN

router = APIRouter(tags=["operations"])


@router.get("/health", summary="The API process is alive")
async def health() -> dict[str, str]:
    """Return 200 while the API process serves requests; checks nothing else."""
    return {"status": "ok"}


@router.get("/ready", summary="Redis is reachable and a worker has its models loaded")
async def ready(queue: QueueDep) -> JSONResponse:
    """Return 200 when Redis answers and at least one worker heartbeat is fresh, else 503."""
    try:
        await queue.redis.ping()
        keys = [key async for key in queue.redis.scan_iter(match=WORKER_KEY_PATTERN, count=100)]
        beats = await queue.redis.mget(keys) if keys else []
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        return JSONResponse(
            {
                "ready": False,
                "redis": False,
                "workers": [],
                "reason": f"Redis unreachable: {error}",
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    workers = [orjson.loads(beat) for beat in beats if beat]
    if not workers:
        return JSONResponse(
            {"ready": False, "redis": True, "workers": [], "reason": "no worker heartbeat"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"ready": True, "redis": True, "workers": workers})
