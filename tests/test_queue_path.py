"""The path through the queue: bytes stored once, small messages, timeouts, Redis outages."""

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from common.contract import QUEUE_NAME, image_key, task_key
from scripts.redis_server import RedisServer, free_port, start_redis
from tests.conftest import ServiceProcess, start_api
from tests.samples import b64, read, t1_jpg, vectron_image


@pytest.fixture
def idle_redis() -> Iterator[RedisServer]:
    """A Redis with no worker consuming from it."""
    server = start_redis()
    yield server
    server.stop()


def test_image_keys_deleted_and_task_keys_expire(
    client: httpx.Client, redis_client: redis.Redis
) -> None:
    response = client.post(
        "/", json={"inputs": [b64(read(t1_jpg()))]}, headers={"X-Request-ID": "keys-check-1"}
    )
    assert response.status_code == 200

    task_keys = [
        key
        for key in redis_client.scan_iter(match=task_key("*"))
        if redis_client.hget(key, "request_id") == b"keys-check-1"
    ]
    assert len(task_keys) == 1
    task_id = task_keys[0].decode().rsplit(":", 1)[1]
    assert redis_client.exists(image_key(task_id, 0)) == 0
    for key in redis_client.scan_iter(match=f"eventsnap:*{task_id}*"):
        assert redis_client.ttl(key) > 0, key


def test_task_message_carries_no_image_bytes(idle_redis: RedisServer, logs_dir: Path) -> None:
    api, base_url = start_api(idle_redis.url, logs_dir / "api-idle.log", REQUEST_TIMEOUT="1.5")
    photo = read(t1_jpg())
    try:
        response = httpx.post(base_url + "/", json={"inputs": [b64(photo)]}, timeout=30)
    finally:
        api.stop()

    assert response.status_code == 504
    assert "No worker answered within 2 s" in response.json()["detail"]

    store = redis.Redis.from_url(idle_redis.url)
    messages = store.lrange(QUEUE_NAME, 0, -1)
    assert len(messages) == 1
    assert len(messages[0]) < 4096
    body = json.loads(messages[0])
    assert b64(photo)[:200] not in messages[0].decode()

    task_id = body["headers"]["id"]
    assert store.get(image_key(task_id, 0)) == photo
    assert 0 < store.ttl(image_key(task_id, 0)) <= 3600
    # No caller waits for the result any more, so a worker arriving later skips it.
    assert store.hget(task_key(task_id), "state") == b"cancelled"


def test_unreachable_redis_gives_503(logs_dir: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    api, base_url = start_api(closed, logs_dir / "api-no-redis.log")
    try:
        response = httpx.post(base_url + "/", json={"inputs": [b64(read(t1_jpg()))]}, timeout=30)
        health = httpx.get(base_url + "/health", timeout=5)
        ready = httpx.get(base_url + "/ready", timeout=5)
    finally:
        api.stop()

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "Redis" in response.json()["detail"]
    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["redis"] is False


def test_health_answers_while_large_batch_runs(client: httpx.Client) -> None:
    batch = {"inputs": [b64(read(vectron_image("players.jpg")))] * 12}
    finished = threading.Event()
    outcome: dict[str, int] = {}

    def send_batch() -> None:
        outcome["status"] = client.post("/", json=batch).status_code
        finished.set()

    sender = threading.Thread(target=send_batch)
    sender.start()
    answered_during_batch = 0
    deadline = time.monotonic() + 120
    while not finished.is_set() and time.monotonic() < deadline:
        if client.get("/health").status_code == 200 and not finished.is_set():
            answered_during_batch += 1
        time.sleep(0.05)
    sender.join()

    assert outcome["status"] == 200
    assert answered_during_batch >= 3


def test_ready_lists_worker_with_model(client: httpx.Client) -> None:
    response = client.get("/ready")

    assert response.status_code == 200
    workers = response.json()["workers"]
    assert workers
    assert workers[0]["model_pack"] == "buffalo_s (embedded)"
    assert workers[0]["recognizer"] == "w600k_mbf.onnx"
    assert workers[0]["provider"] == "CPUExecutionProvider"


def test_api_imports_no_model_code() -> None:
    code = (
        "import sys, api.main\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'onnxruntime', 'insightface', 'cv2', 'onnx'})\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == ""


def test_worker_restarts_serve_after_api_restart(
    redis_url: str, logs_dir: Path, worker: ServiceProcess
) -> None:
    """A new API process finds the running worker through Redis alone."""
    api, base_url = start_api(redis_url, logs_dir / "api-second.log")
    try:
        response = httpx.post(base_url + "/", json={"inputs": [b64(read(t1_jpg()))]}, timeout=60)
    finally:
        api.stop()

    assert response.status_code == 200
    assert len(response.json()[0]) == 6
