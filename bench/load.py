"""Closed-loop load: N client threads, each sending its next request as soon as the last returns.

Request bodies are encoded once before the run, so the clients spend their
time waiting on the server, not on base64. Each client walks the same batch
list from its own starting offset. Only requests that finish inside the
measurement window count; the warm-up before it loads the models' lazy
paths and fills caches.
"""

import math
import threading
import time
from dataclasses import dataclass, field

import httpx
import orjson

from bench.corpus import BATCHES, Photo

REQUEST_TIMEOUT_S = 120.0
# A bound on requests per client, far above what a 10-minute run reaches on
# a CPU, so a server that answers instantly with errors still ends the loop.
MAX_REQUESTS_PER_CLIENT = 100_000


@dataclass
class PreparedRequest:
    """One request body, encoded once, with the number of images it carries."""

    body: bytes
    images: int


@dataclass
class Completed:
    """One finished request."""

    finished_at: float  # time.monotonic()
    latency_s: float
    images: int
    faces: int
    status: int


@dataclass
class LoadResult:
    """What one configuration did inside the measurement window."""

    duration_s: float
    requests: int
    images: int
    faces: int
    errors: int
    latencies_s: list[float] = field(repr=False)
    error_samples: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.duration_s

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.duration_s

    def latency_percentile(self, percent: float) -> float:
        """Return the latency percentile in seconds (nearest rank), NaN without requests."""
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        rank = max(math.ceil(percent / 100 * len(ordered)) - 1, 0)
        return ordered[rank]


def prepare_requests(photos: dict[str, Photo]) -> list[PreparedRequest]:
    """Encode every batch of the corpus as a POST / body with the default parameters."""
    prepared = []
    for batch in BATCHES:
        body = {
            "inputs": [photos[name].base64() for name in batch],
            "max_faces": 0,
            "det_conf": 0.5,
            "nms_thresh": 0.4,
        }
        prepared.append(PreparedRequest(orjson.dumps(body), len(batch)))
    return prepared


def send(client: httpx.Client, request: PreparedRequest) -> Completed:
    """Send one request and count the faces in its response."""
    started = time.monotonic()
    response = client.post("/", content=request.body, headers={"content-type": "application/json"})
    finished = time.monotonic()
    faces = 0
    if response.status_code == 200:
        faces = sum(len(image_faces) for image_faces in orjson.loads(response.content))
    return Completed(finished, finished - started, request.images, faces, response.status_code)


def run_load(
    base_url: str,
    requests: list[PreparedRequest],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> LoadResult:
    """Drive `base_url` with `concurrency` closed-loop clients for warm-up plus duration."""
    start = time.monotonic()
    window_start = start + warmup_s
    window_end = window_start + duration_s
    completed: list[Completed] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client_loop(client_index: int) -> None:
        offset = client_index * len(requests) // max(concurrency, 1)
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
            for count in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= window_end:
                    return
                request = requests[(offset + count) % len(requests)]
                try:
                    result = send(client, request)
                except httpx.HTTPError as error:
                    with lock:
                        failures.append(f"{type(error).__name__}: {error}")
                    continue
                with lock:
                    completed.append(result)

    threads = [
        threading.Thread(target=client_loop, args=(index,), daemon=True)
        for index in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        # A request started just before the window ends may take up to its timeout.
        thread.join(timeout=warmup_s + duration_s + REQUEST_TIMEOUT_S + 10)

    in_window = [item for item in completed if window_start <= item.finished_at <= window_end]
    succeeded = [item for item in in_window if item.status == 200]
    errors = [item for item in in_window if item.status != 200]
    samples = failures[:3] + [f"HTTP {item.status}" for item in errors[:3]]
    return LoadResult(
        duration_s=duration_s,
        requests=len(succeeded),
        images=sum(item.images for item in succeeded),
        faces=sum(item.faces for item in succeeded),
        errors=len(errors) + len(failures),
        latencies_s=[item.latency_s for item in succeeded],
        error_samples=samples,
    )
