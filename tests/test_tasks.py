"""Asynchronous tasks end to end: submit, poll, cancel, idempotency and webhooks.

Runs against real Redis servers, real worker processes with the ONNX models
and real API processes. The session worker uses CHUNK_IMAGES=4.
"""

import hashlib
import hmac
import http.server
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis

from api.routes.tasks import check_callback_url
from common.contract import (
    QUEUE_NAME,
    WEBHOOK_QUEUE_NAME,
    idempotency_key,
    image_key,
    result_key,
    task_key,
)
from scripts.redis_server import start_redis
from tests.conftest import WEBHOOK_SECRET, ServiceProcess, start_api, start_worker, wait_for_worker
from tests.samples import b64, read, skimage_image, t1_jpg, vectron_image

FINAL = {"succeeded", "failed", "cancelled"}


def submit(client: httpx.Client, images: list[bytes], **fields: Any) -> str:
    headers = fields.pop("headers", None)
    body = {"inputs": [b64(data) for data in images], **fields}
    response = client.post("/tasks", json=body, headers=headers)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    assert response.json() == {"task_id": task_id, "status_url": f"/tasks/{task_id}"}
    assert response.headers["location"] == f"/tasks/{task_id}"
    return task_id


def poll(client: httpx.Client, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll GET /tasks/{id} until the task is final; return its document."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        if document["state"] in FINAL:
            return document
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} not final within {timeout} s: {document}")


def wait_until(condition: Any, timeout: float = 60, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{message} not met within {timeout} s")


def cosine(first: list[float], second: list[float]) -> float:
    a, b = np.asarray(first), np.asarray(second)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Check a webhook signature as docs/tasks.md describes for receivers."""
    timestamp = headers["x-eventsnap-timestamp"]
    message = timestamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= 300
    return fresh and hmac.compare_digest(expected, headers["x-eventsnap-signature"])


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records POSTs and responds with planned statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    headers = {key.lower(): value for key, value in self.headers.items()}
                    receiver.requests.append((headers, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 60) -> list[tuple[dict[str, str], bytes, int]]:
        wait_until(lambda: len(self.requests) >= count, timeout, f"{count} webhook requests")
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


def task_keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(match=task_key("*")))


def keys_without_ttl(client: redis.Redis) -> list[bytes]:
    keys = list(client.scan_iter(match="eventsnap:*"))
    ttls = [client.ttl(key) for key in keys]
    # -2 means the key vanished between SCAN and TTL (a worker deleted it).
    return [key for key, ttl in zip(keys, ttls, strict=True) if ttl == -1]


def test_task_result_matches_post(client: httpx.Client) -> None:
    images = [read(t1_jpg()), read(vectron_image("players.jpg"))]
    body = {"inputs": [b64(data) for data in images], "det_conf": 0.5}
    sync_response = client.post("/", json=body)
    assert sync_response.status_code == 200, sync_response.text
    expected = sync_response.json()

    task_id = submit(client, images, det_conf=0.5)
    document = poll(client, task_id)

    assert document["state"] == "succeeded"
    assert document["errors"] == []
    assert document["progress"] == {"done": 2, "total": 2}
    assert document["task_id"] == task_id
    for field in ("created_at", "started_at", "finished_at"):
        assert document[field].endswith("Z")
    assert document["created_at"] <= document["started_at"] <= document["finished_at"]
    result = document["result"]
    assert [len(faces) for faces in result] == [len(faces) for faces in expected]
    assert [len(faces) for faces in result] == [6, len(expected[1])]
    for got_faces, want_faces in zip(result, expected, strict=True):
        for got, want in zip(got_faces, want_faces, strict=True):
            assert np.allclose(got["bbox"], want["bbox"], atol=0.5)
            assert cosine(got["embedding"], want["embedding"]) > 0.999


def test_progress_rises_to_total(client: httpx.Client, redis_client: redis.Redis) -> None:
    task_id = submit(client, [read(t1_jpg())] * 12)
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        document = client.get(f"/tasks/{task_id}").json()
        seen.append(document["progress"]["done"])
        assert document["progress"]["total"] == 12
        if document["state"] in FINAL:
            break
        time.sleep(0.02)

    assert document["state"] == "succeeded"
    assert seen == sorted(seen)
    assert seen[-1] == 12
    assert set(seen) <= {0, 4, 8, 12}
    assert {4, 8} & set(seen), f"no intermediate progress seen: {seen}"
    assert [len(faces) for faces in document["result"]] == [6] * 12
    assert list(redis_client.scan_iter(match=f"eventsnap:image:{task_id}:*")) == []


def test_truncated_jpeg_gets_null_and_error(client: httpx.Client) -> None:
    jpeg = read(t1_jpg())
    truncated = jpeg[: len(jpeg) // 2]
    task_id = submit(client, [jpeg, truncated, read(skimage_image("astronaut.png"))])
    document = poll(client, task_id)

    assert document["state"] == "succeeded"
    result = document["result"]
    assert len(result[0]) == 6
    assert result[1] is None
    assert len(result[2]) == 1
    assert len(document["errors"]) == 1
    error = document["errors"][0]
    assert error["index"] == 1
    assert error["code"] == "image_decode_failed"
    assert "could not be decoded" in error["message"]


def test_unknown_task_gives_404(client: httpx.Client) -> None:
    unknown = "0123456789abcdef0123456789abcdef"
    for method, task_id in [
        ("GET", unknown),
        ("DELETE", unknown),
        ("GET", "not-a-task-id"),
        ("DELETE", "not-a-task-id"),
        ("GET", unknown.upper()),
    ]:
        response = client.request(method, f"/tasks/{task_id}")
        assert response.status_code == 404, (method, task_id)
        assert response.json() == {
            "detail": f"Task {task_id!r} not found: the id was never issued, or the task "
            "expired (tasks are kept RESULT_TTL seconds)."
        }


def test_keys_have_ttl_and_images_deleted(client: httpx.Client, redis_client: redis.Redis) -> None:
    task_id = submit(client, [read(skimage_image("astronaut.png"))] * 2)
    assert poll(client, task_id)["state"] == "succeeded"

    assert redis_client.exists(image_key(task_id, 0), image_key(task_id, 1)) == 0
    assert 0 < redis_client.ttl(task_key(task_id)) <= 3600
    assert 0 < redis_client.ttl(result_key(task_id)) <= 3600
    assert keys_without_ttl(redis_client) == []


def test_finished_task_cannot_be_cancelled(client: httpx.Client) -> None:
    task_id = submit(client, [read(skimage_image("astronaut.png"))])
    assert poll(client, task_id)["state"] == "succeeded"

    response = client.delete(f"/tasks/{task_id}")

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Task {task_id} is already succeeded; only queued or running tasks "
        "can be cancelled."
    }
    assert client.get(f"/tasks/{task_id}").json()["state"] == "succeeded"


def test_idempotency_key_gives_one_task(
    client: httpx.Client, redis_client: redis.Redis, worker: ServiceProcess
) -> None:
    images = [read(skimage_image("astronaut.png"))]
    before = task_keys(redis_client)
    headers = {"Idempotency-Key": "order-1234-upload-1"}

    first = client.post("/tasks", json={"inputs": [b64(images[0])]}, headers=headers)
    second = client.post("/tasks", json={"inputs": [b64(images[0])]}, headers=headers)

    assert first.status_code == 202
    assert second.status_code == 202
    task_id = first.json()["task_id"]
    assert second.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert task_keys(redis_client) - before == {task_key(task_id).encode()}
    assert poll(client, task_id)["state"] == "succeeded"
    assert worker.log().count(f"Task {task_id} started") == 1
    digest = hashlib.sha256(b"order-1234-upload-1").hexdigest()
    assert 0 < redis_client.ttl(idempotency_key(digest)) <= 3600

    other_body = client.post(
        "/tasks", json={"inputs": [b64(images[0])], "max_faces": 1}, headers=headers
    )
    assert other_body.status_code == 422
    [detail] = other_body.json()["detail"]
    assert detail["loc"] == ["header", "Idempotency-Key"]
    assert detail["type"] == "idempotency_key_reused"


def test_concurrent_idempotent_submissions(client: httpx.Client, redis_client: redis.Redis) -> None:
    body = {"inputs": [b64(read(skimage_image("astronaut.png")))]}
    headers = {"Idempotency-Key": "concurrent-key"}
    before = task_keys(redis_client)

    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda _: client.post("/tasks", json=body, headers=headers), range(4))
        )

    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {202, 409}
    accepted_ids = {
        response.json()["task_id"] for response in responses if response.status_code == 202
    }
    assert len(accepted_ids) == 1
    [task_id] = accepted_ids
    assert task_keys(redis_client) - before == {task_key(task_id).encode()}
    assert poll(client, task_id)["state"] == "succeeded"


def test_webhook_gets_signed_document(client: httpx.Client, receiver: WebhookReceiver) -> None:
    task_id = submit(client, [read(skimage_image("astronaut.png"))], callback_url=receiver.url)
    polled = poll(client, task_id)

    [(headers, body, status)] = receiver.wait_for(1)

    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-eventsnap-task-id"] == task_id
    assert verify_signature(WEBHOOK_SECRET, headers, body)
    assert not verify_signature("another-secret", headers, body)
    assert orjson.loads(body) == polled
    assert polled["state"] == "succeeded"


def test_webhook_retried_after_server_error(client: httpx.Client, worker: ServiceProcess) -> None:
    receiver = WebhookReceiver(statuses=[500, 200])
    try:
        task_id = submit(client, [read(skimage_image("astronaut.png"))], callback_url=receiver.url)
        requests = receiver.wait_for(2)
    finally:
        receiver.close()

    assert [status for _, _, status in requests] == [500, 200]
    for headers, body, _ in requests:
        assert verify_signature(WEBHOOK_SECRET, headers, body)
        assert orjson.loads(body)["task_id"] == task_id
    log = worker.log()
    assert f"Task {task_id}: webhook attempt 1 to {receiver.url} failed: HTTP 500" in log
    wait_until(
        lambda: f"Task {task_id}: webhook delivered to {receiver.url} on attempt 2" in worker.log(),
        message="delivery log line",
    )


def test_callback_host_not_allowed(client: httpx.Client) -> None:
    image = b64(read(skimage_image("astronaut.png")))
    for url in ["http://10.0.0.5/hook", "ftp://127.0.0.1/hook", "http://127.0.0.1:99999/hook"]:
        response = client.post("/tasks", json={"inputs": [image], "callback_url": url})
        assert response.status_code == 422, url
        [detail] = response.json()["detail"]
        assert detail["loc"] == ["body", "callback_url"]
        assert detail["type"] == "value_error"


def test_callback_rules() -> None:
    allowed = frozenset({"127.0.0.1", "hooks.example.com"})
    check_callback_url("https://HOOKS.example.com:8443/in?token=1", allowed)
    check_callback_url("http://127.0.0.1:8000/hook", allowed)
    with pytest.raises(ValueError, match="WEBHOOK_ALLOWED_HOSTS is empty"):
        check_callback_url("http://127.0.0.1/hook", frozenset())
    with pytest.raises(ValueError, match="not in WEBHOOK_ALLOWED_HOSTS"):
        check_callback_url("http://hooks.example.com.evil.test/", allowed)
    with pytest.raises(ValueError, match="http or https"):
        check_callback_url("file:///etc/passwd", allowed)
    with pytest.raises(ValueError, match="no host"):
        check_callback_url("http:///hook", allowed)


def test_cancel_running_task(
    client: httpx.Client, redis_client: redis.Redis, worker: ServiceProcess
) -> None:
    receiver = WebhookReceiver()
    try:
        task_id = submit(client, [read(t1_jpg())] * 16, callback_url=receiver.url)
        wait_until(
            lambda: client.get(f"/tasks/{task_id}").json()["state"] == "running",
            message="task running",
        )

        response = client.delete(f"/tasks/{task_id}")
        assert response.status_code == 202
        assert response.json()["state"] == "cancelled"
        assert response.json()["result"] is None
        wait_until(
            lambda: f"Task {task_id} stopped after" in worker.log(), message="worker stopped"
        )
        [(headers, body, _)] = receiver.wait_for(1)
    finally:
        receiver.close()

    document = client.get(f"/tasks/{task_id}").json()
    assert document["state"] == "cancelled"
    assert document["result"] is None
    assert document["progress"]["done"] < 16
    stopped = re.search(rf"Task {task_id} stopped after (\d+) of 16 images", worker.log())
    assert stopped is not None
    assert document["progress"]["done"] <= int(stopped.group(1)) < 16
    assert document["errors"] == [
        {"index": None, "code": "cancelled", "message": "Cancelled by a DELETE request."}
    ]
    assert redis_client.exists(result_key(task_id)) == 0
    assert list(redis_client.scan_iter(match=f"eventsnap:image:{task_id}:*")) == []
    assert verify_signature(WEBHOOK_SECRET, headers, body)
    assert orjson.loads(body)["state"] == "cancelled"


def test_second_api_process_polls(client: httpx.Client, redis_url: str, logs_dir: Path) -> None:
    task_id = submit(client, [read(skimage_image("astronaut.png"))])
    second, second_url = start_api(redis_url, logs_dir / "api-second.log")
    try:
        with httpx.Client(base_url=second_url, timeout=60) as other:
            document = poll(other, task_id)
            assert document["state"] == "succeeded"
            assert other.get(f"/tasks/{task_id}").content == client.get(f"/tasks/{task_id}").content
    finally:
        second.stop()


def test_cancelled_queued_task_never_runs(logs_dir: Path, receiver: WebhookReceiver) -> None:
    server = start_redis()
    store = redis.Redis.from_url(server.url)
    api, api_url = start_api(
        server.url, logs_dir / "api-idle.log", WEBHOOK_ALLOWED_HOSTS="127.0.0.1"
    )
    worker: ServiceProcess | None = None
    try:
        with httpx.Client(base_url=api_url, timeout=60) as http:
            task_id = submit(http, [read(t1_jpg())] * 2, callback_url=receiver.url)
            assert http.get(f"/tasks/{task_id}").json()["state"] == "queued"
            assert store.exists(image_key(task_id, 0), image_key(task_id, 1)) == 2

            response = http.delete(f"/tasks/{task_id}")
            assert response.status_code == 200
            assert response.json()["state"] == "cancelled"
            assert response.json()["progress"] == {"done": 0, "total": 2}
            assert response.json()["started_at"] is None
            assert http.delete(f"/tasks/{task_id}").status_code == 409

            worker = start_worker(
                server.url, logs_dir / "worker-idle.log", WEBHOOK_SECRET=WEBHOOK_SECRET
            )
            wait_for_worker(worker, store)
            started = worker
            wait_until(
                lambda: f"Task {task_id} is already cancelled" in started.log(),
                message="worker skipped the cancelled task",
            )
            [(headers, body, _)] = receiver.wait_for(1)
            wait_until(
                lambda: (
                    store.llen(QUEUE_NAME) + store.llen(WEBHOOK_QUEUE_NAME) == 0
                    and store.hlen("unacked") == 0
                ),
                message="broker queues empty",
            )

            document = http.get(f"/tasks/{task_id}").json()
            assert document["state"] == "cancelled"
            assert document["started_at"] is None
            assert document["progress"]["done"] == 0
            assert store.exists(result_key(task_id)) == 0
            assert list(store.scan_iter(match=f"eventsnap:image:{task_id}:*")) == []
            assert f"Task {task_id} started" not in worker.log()
            assert len(receiver.requests) == 1
            assert verify_signature(WEBHOOK_SECRET, headers, body)
            assert orjson.loads(body) == document
            assert keys_without_ttl(store) == []
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
        server.stop()


def test_empty_idempotency_key_rejected(client: httpx.Client) -> None:
    response = client.post(
        "/tasks",
        json={"inputs": [b64(read(vectron_image("yaoming.jpg")))]},
        headers={"Idempotency-Key": ""},
    )

    assert response.status_code == 422
    [detail] = response.json()["detail"]
    assert detail["loc"] == ["header", "Idempotency-Key"]
    assert detail["type"] == "string_too_short"
