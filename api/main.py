"""The FastAPI application: `uvicorn api.main:app --host 0.0.0.0 --port 5000`.

The API validates requests, stores image bytes in Redis and waits for the
workers' results. It imports no model code (onnxruntime, insightface, OpenCV).
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import kombu.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from api import __version__
from api.metrics import MetricsMiddleware
from api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from api.queue import QueueFullError, TaskQueue
from api.routes import demo, detect, health, tasks
from api.security import ApiKeyMiddleware
from api.settings import get_settings
from common.logs import configure_logging

logger = logging.getLogger("api")

BROKER_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
QUEUE_FULL_RETRY_AFTER_S = "5"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the Redis pool and the Celery producer for the life of the process."""
    settings = get_settings()
    app.state.queue = TaskQueue(settings)
    logger.info(
        "API started: redis=%s request_timeout=%.0fs max_images=%d api_keys=%d cors_origins=%s",
        redact(settings.redis_url),
        settings.request_timeout,
        settings.max_images_per_request,
        len(settings.api_keys),
        sorted(settings.cors_origins) or "none",
    )
    yield
    await app.state.queue.close()
    logger.info("API stopped")


def redact(url: str) -> str:
    """Hide the password of a Redis URL for logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at and credentials else url


async def broker_unavailable(request: Request, error: Exception) -> JSONResponse:
    """Return 503 with Retry-After when Redis cannot be reached."""
    logger.error("Broker unreachable during %s %s: %s", request.method, request.url.path, error)
    return JSONResponse(
        {
            "detail": "The broker (Redis) is unreachable, so the request was not queued. "
            "Retry after a few seconds; operators should check REDIS_URL and the Redis server."
        },
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def queue_full(request: Request, error: Exception) -> JSONResponse:
    """Return 503 with Retry-After when too many tasks wait in the queue."""
    logger.warning("Queue full during %s %s: %s", request.method, request.url.path, error)
    return JSONResponse(
        {
            "detail": f"The queue is full: {error}, so the request was not queued. "
            "Retry after a few seconds, or ask the operators to add workers."
        },
        status_code=503,
        headers={"Retry-After": QUEUE_FULL_RETRY_AFTER_S},
    )


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)

    app = FastAPI(
        title="Eventsnap Inference",
        version=__version__,
        description="Face detection and 512-value ArcFace embeddings for event photos.",
        lifespan=lifespan,
    )

    # Starlette runs the middleware added last first. From the outside in: the
    # request id (so even a 401 or 413 carries one), CORS (so browsers get their
    # headers on every response), metrics (so rejected requests are counted), the
    # API key check, then the body size limit.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(MetricsMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key",
                           "X-Request-ID"],
            expose_headers=["X-Request-ID", "Location", "Retry-After"],
        )  # fmt: skip
    app.add_middleware(RequestIdMiddleware)
    for error_type in BROKER_ERRORS:
        app.add_exception_handler(error_type, broker_unavailable)
    app.add_exception_handler(QueueFullError, queue_full)
    app.include_router(detect.router)
    app.include_router(tasks.router)
    app.include_router(health.router)
    app.include_router(demo.router)
    return app


app = create_app()
