"""Prometheus metrics of a worker process, served on its own port (WORKER_METRICS_PORT).

Each worker exposes its own endpoint, so Prometheus scrapes every worker
directly. The API's /metrics covers the API process, the queue depth and the
number of live workers.
"""

import logging

from prometheus_client import Counter, Histogram, start_http_server

logger = logging.getLogger(__name__)

STAGE_SECONDS = Histogram(
    "eventsnap_worker_stage_seconds",
    "Wall time of one pipeline stage for one chunk of images (decode, detect, align, embed).",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IMAGES = Counter("eventsnap_worker_images_total", "Images processed, by outcome.", ["outcome"])
FACES = Counter("eventsnap_worker_faces_total", "Faces detected and embedded.")
DETECTOR_BATCH = Histogram(
    "eventsnap_worker_detector_batch_images",
    "Images per detector run.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
RECOGNIZER_BATCH = Histogram(
    "eventsnap_worker_recognizer_batch_faces",
    "Faces per recognizer call (before splitting by RECOGNITION_BATCH_SIZE).",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
TASKS = Counter("eventsnap_worker_tasks_total", "Tasks finished, by final state.", ["state"])


def serve_metrics(port: int) -> None:
    """Start the metrics HTTP server in a daemon thread; port 0 disables it."""
    if port == 0:
        logger.info("Worker metrics endpoint disabled (WORKER_METRICS_PORT=0)")
        return
    try:
        start_http_server(port)
    except OSError as error:
        # A second worker on the same host and network namespace finds the port taken;
        # it keeps serving tasks, only without its own metrics endpoint.
        logger.error("Worker metrics not served: port %d unavailable: %s", port, error)
        return
    logger.info("Worker metrics on :%d/metrics", port)
