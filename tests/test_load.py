"""Load: 100 concurrent clients for 60 seconds against one worker.

Every request must get an answer: 200, or a deliberate 503 (queue full) or 504
(REQUEST_TIMEOUT passed), never another 5xx and never a hang. /health must stay
fast throughout; it is measured from a separate process, so the 100 clients'
threads in this process do not add to its latency.
"""

import multiprocessing
import multiprocessing.queues
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.samples import b64, read, vectron_image
from tests.stacks import running_stack

CLIENTS = 100
DURATION_S = 60.0
REQUEST_TIMEOUT_S = 20
HEALTH_BOUND_S = 0.1


def probe_health(base_url: str, duration_s: float, results: "multiprocessing.Queue[float]") -> None:
    """Time GET /health every 0.2 s for `duration_s` seconds; put each latency on `results`."""
    deadline = time.monotonic() + duration_s
    with httpx.Client(base_url=base_url, timeout=10) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = http.get("/health")
            elapsed = time.perf_counter() - started
            results.put(elapsed if response.status_code == 200 else float("inf"))
            time.sleep(0.2)


@pytest.mark.slow
def test_hundred_clients_for_a_minute(logs_dir: Path) -> None:
    body = {"inputs": [b64(read(vectron_image("yaoming.jpg")))]}
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + DURATION_S

    def client_loop() -> None:
        # The client timeout is far beyond REQUEST_TIMEOUT: a request that runs
        # into it has hung, which is what this test must catch.
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S + 60) as http:
            while time.monotonic() < stop_at:
                try:
                    response = http.post("/", json=body)
                except httpx.HTTPError as error:
                    with lock:
                        failures.append(f"{type(error).__name__}: {error}")
                    continue
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 503 and "retry-after" not in response.headers:
                        failures.append("503 without Retry-After")
                if response.status_code == 503:
                    time.sleep(float(response.headers.get("retry-after", "1")))

    # One onnxruntime thread leaves the second core to the API and the clients.
    stack_context = running_stack(
        logs_dir,
        "load",
        worker_env={"INTRA_OP_THREADS": "1"},
        api_env={"REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S), "MAX_QUEUE_DEPTH": "80"},
    )
    with stack_context as stack:
        base_url = stack.base_url
        context = multiprocessing.get_context("spawn")
        latencies: multiprocessing.queues.Queue[float] = context.Queue()
        probe = context.Process(target=probe_health, args=(base_url, DURATION_S, latencies))
        probe.start()
        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DURATION_S + REQUEST_TIMEOUT_S + 90)
        probe.join(timeout=30)
        hung = sum(thread.is_alive() for thread in threads)
        health = []
        while not latencies.empty():
            health.append(latencies.get())

    assert hung == 0
    assert failures == []
    assert statuses[200] > 0
    assert set(statuses) <= {200, 503, 504}, statuses
    assert len(health) > DURATION_S, "the /health probe stopped early"
    slowest = max(health)
    assert slowest < HEALTH_BOUND_S, (
        f"/health took {slowest * 1000:.0f} ms at worst while {CLIENTS} clients posted "
        f"photos (bound {HEALTH_BOUND_S * 1000:.0f} ms; statuses {dict(statuses)}). "
        "On a 2-core machine shared with other test runs, rerun before suspecting the API."
    )
