"""Prometheus metrics of the API process, served at GET /metrics.

Request counts and latencies are labelled by route template (`/tasks/{task_id}`),
never by raw path, so task ids do not multiply the series. Queue depth and the
number of live workers are read from Redis at scrape time.

With several uvicorn processes (WEB_CONCURRENCY > 1), set PROMETHEUS_MULTIPROC_DIR
to an empty folder shared by them; /metrics then merges all processes.
"""

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "eventsnap_http_requests_total",
    "HTTP requests by route template, method and status code.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "eventsnap_http_request_duration_seconds",
    "HTTP request duration by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IMAGES_RECEIVED = Counter(
    "eventsnap_images_received_total",
    "Images that passed validation and were queued, by kind of task.",
    ["kind"],
)
QUEUE_DEPTH = Gauge(
    "eventsnap_queue_depth",
    "Task messages waiting in the broker queue, read at scrape time.",
    multiprocess_mode="max",
)
LIVE_WORKERS = Gauge(
    "eventsnap_live_workers",
    "Workers with a fresh heartbeat, read at scrape time.",
    multiprocess_mode="max",
)


def render_metrics() -> tuple[bytes, str]:
    """Return the exposition text and its content type, merging processes when configured."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Count every HTTP request and time it, labelled by the matched route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            REQUESTS.labels(template, method, str(status)).inc()
            LATENCY.labels(template, method).observe(time.perf_counter() - started)
