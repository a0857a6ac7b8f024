"""Measure what the queue adds to one small request, and read the workers' stage timings.

The worker stores `started_at` and `finished_at` (epoch seconds) and
`timings_ms` in each task's hash, with the caller's X-Request-ID in
`request_id`. The synchronous overhead of a request is its latency at the
client minus the worker's processing time (finished_at - started_at):
validation, Redis writes, the Celery hop, the wait wake-up and the response.
"""

import statistics
import time
import uuid
from typing import Any

import httpx
import orjson
import redis

from bench.corpus import Photo
from common.contract import task_key

REQUEST_TIMEOUT_S = 60.0


def read_task_documents(redis_url: str) -> list[dict[str, bytes]]:
    """Return every task hash in Redis (the benchmark starts a fresh Redis per configuration)."""
    client = redis.Redis.from_url(redis_url)
    documents = []
    for key in client.scan_iter(match=task_key("*"), count=1000):
        document = client.hgetall(key)
        if document:
            documents.append(document)
    client.close()
    return documents


def measure_sync_overhead(
    base_url: str, redis_url: str, photo: Photo, count: int
) -> dict[str, Any]:
    """Send `count` sequential one-image requests and return overhead percentiles in ms."""
    body = orjson.dumps({"inputs": [photo.base64()], "max_faces": 0})
    run_id = uuid.uuid4().hex[:12]
    latencies_s: dict[str, float] = {}
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        for index in range(count):
            request_id = f"bench-overhead-{run_id}-{index}"
            headers = {"content-type": "application/json", "x-request-id": request_id}
            started = time.perf_counter()
            response = client.post("/", content=body, headers=headers)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(
                    f"Overhead request {index} failed: "
                    f"HTTP {response.status_code} {response.text[:200]}"
                )
            latencies_s[request_id] = elapsed

    processing_s: dict[str, float] = {}
    for document in read_task_documents(redis_url):
        request_id = document.get(b"request_id", b"").decode()
        if request_id in latencies_s and b"finished_at" in document and b"started_at" in document:
            processing_s[request_id] = float(document[b"finished_at"]) - float(
                document[b"started_at"]
            )
    if not processing_s:
        raise RuntimeError(
            "No task hash carried the benchmark's X-Request-ID, so the worker's processing time "
            "is unknown; check that the API stores the request id in the task hash."
        )

    overheads_ms = [
        (latencies_s[request_id] - processing) * 1000
        for request_id, processing in processing_s.items()
    ]
    return {
        "photo": photo.name,
        "requests": count,
        "matched_task_hashes": len(processing_s),
        "latency_p50_ms": statistics.median(latencies_s.values()) * 1000,
        "worker_processing_p50_ms": statistics.median(processing_s.values()) * 1000,
        "overhead_p50_ms": statistics.median(overheads_ms),
        "overhead_p90_ms": statistics.quantiles(overheads_ms, n=10)[-1]
        if len(overheads_ms) >= 2
        else overheads_ms[0],
    }


def stage_profile(documents: list[dict[str, bytes]]) -> dict[str, Any]:
    """Sum the workers' per-stage times over finished tasks, in ms in total and per image."""
    totals: dict[str, float] = {}
    images = 0
    tasks = 0
    for document in documents:
        timings = document.get(b"timings_ms")
        if document.get(b"state") != b"succeeded" or not timings:
            continue
        tasks += 1
        images += int(document.get(b"total", b"0"))
        for stage, milliseconds in orjson.loads(timings).items():
            totals[stage] = totals.get(stage, 0.0) + float(milliseconds)
    per_image = {stage: total / images for stage, total in totals.items()} if images else {}
    return {"tasks": tasks, "images": images, "total_ms": totals, "per_image_ms": per_image}
