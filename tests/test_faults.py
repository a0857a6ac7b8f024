"""Faults: killed workers, a Redis outage, a full queue and tasks past their time limits.

Each test causes the fault on a stack of its own and checks that no task is
lost and that every request gets a defined status.
"""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import httpx
import pytest
import redis
from kombu.transport.redis import Channel

from common.contract import FINAL_STATES, QUEUE_NAME, task_key
from scripts.redis_server import start_redis
from tests.samples import b64, encode, read, t1_image, vectron_image
from tests.stacks import Stack, running_stack

pytestmark = pytest.mark.slow

# The shortest visibility timeout the worker accepts, so a killed worker's task
# comes back quickly.
FAST_REDELIVERY = {"BROKER_VISIBILITY_TIMEOUT": "15", "CHUNK_IMAGES": "4", "INTRA_OP_THREADS": "1"}


@cache
def large_photo() -> str:
    """The six-face group photo scaled to 3840x2658 (10 megapixels), as base64."""
    image = t1_image()
    return b64(encode(image.resize((image.width * 3, image.height * 3)), "JPEG", quality=90))


def small_body() -> dict[str, list[str]]:
    return {"inputs": [b64(read(vectron_image("yaoming.jpg")))]}


def wait_final(http: httpx.Client, task_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document: dict = http.get(f"/tasks/{task_id}").json()
        if document["state"] in FINAL_STATES:
            return document
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish within {timeout} s")


def sync_task_id(client: redis.Redis, request_id: str, timeout: float = 60) -> str:
    """Find the task that a POST / with this X-Request-ID created."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key in client.scan_iter(match=task_key("*")):
            if client.hget(key, "request_id") == request_id.encode():
                return key.decode().rsplit(":", 1)[1]
        time.sleep(0.05)
    raise AssertionError(f"no task with request id {request_id} within {timeout} s")


def keep_two_workers(stack: Stack) -> None:
    while len(stack.live_workers()) < 2:
        stack.add_worker()


@pytest.fixture(scope="module")
def pair(logs_dir: Path) -> Iterator[Stack]:
    """Two workers that redeliver a killed worker's task after 15 s, and an API."""
    with running_stack(
        logs_dir, "pair", workers=2, worker_env=FAST_REDELIVERY,
        api_env={"REQUEST_TIMEOUT": "120"},
    ) as stack:  # fmt: skip
        yield stack


def test_async_task_survives_worker_kill(pair: Stack) -> None:
    keep_two_workers(pair)
    with pair.client() as http:
        task_id = http.post("/tasks", json={"inputs": [large_photo()] * 24}).json()["task_id"]
        killed = pair.wait_until_running(task_id)
        pair.kill_worker(killed)
        document = wait_final(http, task_id)

    assert document["state"] == "succeeded", document["errors"]
    assert [len(faces) for faces in document["result"]] == [6] * 24
    attempts, worker = pair.redis.hmget(task_key(task_id), ["attempts", "worker"])
    assert attempts == b"2"
    assert not worker.decode().endswith(f":{killed}")


def test_sync_request_survives_worker_kill(pair: Stack) -> None:
    keep_two_workers(pair)
    request_id = "sync-kill-test"
    with ThreadPoolExecutor(1) as pool, pair.client() as http:
        future = pool.submit(
            http.post,
            "/",
            json={"inputs": [large_photo()] * 24},
            headers={"X-Request-ID": request_id},
        )
        task_id = sync_task_id(pair.redis, request_id)
        pair.kill_worker(pair.wait_until_running(task_id))
        response = future.result(timeout=180)

    assert response.status_code == 200, response.text
    assert [len(faces) for faces in response.json()] == [6] * 24
    assert pair.redis.hget(task_key(task_id), "attempts") == b"2"


def test_twenty_tasks_survive_worker_kill(pair: Stack) -> None:
    keep_two_workers(pair)
    with pair.client() as http:
        task_ids = [
            http.post("/tasks", json={"inputs": [large_photo()] * 3}).json()["task_id"]
            for _ in range(20)
        ]
        # Kill a worker in the middle of the batch, while it runs a task.
        while sum(pair.redis.hget(task_key(t), "state") == b"succeeded" for t in task_ids) < 6:
            time.sleep(0.1)
        running = next(t for t in task_ids if pair.redis.hget(task_key(t), "state") == b"running")
        pair.kill_worker(pair.wait_until_running(running))
        documents = [wait_final(http, task_id) for task_id in task_ids]

    assert [document["state"] for document in documents] == ["succeeded"] * 20
    for document in documents:
        assert [len(faces) for faces in document["result"]] == [6] * 3
    assert pair.redis.llen(QUEUE_NAME) == 0
    assert pair.redis.hlen(Channel.unacked_key) == 0


def test_running_task_lease_renewed(pair: Stack) -> None:
    keep_two_workers(pair)
    with pair.client() as http:
        task_id = http.post("/tasks", json={"inputs": [large_photo()] * 48}).json()["task_id"]
        pair.wait_until_running(task_id)
        scores: list[float] = []
        while pair.redis.hget(task_key(task_id), "state") == b"running":
            scores += [score for _, score in pair.redis.zrange(
                Channel.unacked_index_key, 0, -1, withscores=True)]  # fmt: skip
            time.sleep(0.5)
        document = wait_final(http, task_id)

    assert document["state"] == "succeeded"
    assert len(set(scores)) > 1, "the running message's lease was never renewed"
    assert pair.redis.hget(task_key(task_id), "attempts") == b"1"


def test_task_failed_after_max_attempts(pair: Stack) -> None:
    for worker in pair.live_workers():
        worker.stop()
    pair.add_worker(TASK_MAX_ATTEMPTS="1")
    pair.add_worker(TASK_MAX_ATTEMPTS="1")
    with pair.client() as http:
        task_id = http.post("/tasks", json={"inputs": [large_photo()] * 24}).json()["task_id"]
        pair.kill_worker(pair.wait_until_running(task_id))
        document = wait_final(http, task_id)

    assert document["state"] == "failed"
    assert document["errors"][0]["code"] == "worker_lost"
    assert "TASK_MAX_ATTEMPTS=1" in document["errors"][0]["message"]


def test_redis_outage_gives_503_then_recovers(logs_dir: Path) -> None:
    with running_stack(logs_dir, "outage") as stack, stack.client(timeout=90) as http:
        assert http.post("/", json=small_body()).status_code == 200
        port = stack.server.port
        stack.server.stop()
        # Longer than the worker's heartbeat interval (5 s), so a beat fails.
        time.sleep(6)

        detect = http.post("/", json=small_body())
        submit = http.post("/tasks", json=small_body())
        health = http.get("/health")
        ready = http.get("/ready")

        stack.server = start_redis(port=port)
        deadline = time.monotonic() + 60
        while http.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        after = http.post("/", json=small_body())
        worker_log = stack.workers[0].log()
        worker_alive = stack.workers[0].process.poll() is None

    for response in (detect, submit):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert "broker (Redis)" in response.json()["detail"]
    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["redis"] is False
    assert after.status_code == 200, after.text
    assert len(after.json()[0]) == 1
    assert worker_alive
    assert "Heartbeat restored" in worker_log


def test_full_queue_gives_503(logs_dir: Path) -> None:
    limits = {"MAX_QUEUE_DEPTH": "3", "REQUEST_TIMEOUT": "2"}
    stack_context = running_stack(logs_dir, "no-worker", workers=0, api_env=limits)
    with stack_context as stack, stack.client(timeout=30) as http:
        # Without a worker, POST / returns 504 once REQUEST_TIMEOUT passes, never later.
        timed_out = http.post("/", json=small_body())
        while stack.redis.llen(QUEUE_NAME) < 3:
            assert http.post("/tasks", json=small_body()).status_code == 202
        full_task = http.post("/tasks", json=small_body())
        full_detect = http.post("/", json=small_body())
        depth = stack.redis.llen(QUEUE_NAME)

    assert timed_out.status_code == 504
    assert "REQUEST_TIMEOUT" in timed_out.json()["detail"]
    for response in (full_task, full_detect):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert "queue is full" in response.json()["detail"]
        assert "MAX_QUEUE_DEPTH" in response.json()["detail"]
    assert depth == 3


def test_soft_time_limit_fails_task(logs_dir: Path) -> None:
    limits = {"TASK_SOFT_TIME_LIMIT": "1", "CHUNK_IMAGES": "4"}
    with running_stack(logs_dir, "soft-limit", worker_env=limits) as stack, stack.client() as http:
        task_id = http.post("/tasks", json={"inputs": [large_photo()] * 24}).json()["task_id"]
        document = wait_final(http, task_id)
        detect = http.post("/", json={"inputs": [large_photo()] * 24})
        small = http.post("/", json=small_body())

    assert document["state"] == "failed"
    assert document["errors"][0]["code"] == "time_limit_exceeded"
    assert "TASK_SOFT_TIME_LIMIT" in document["errors"][0]["message"]
    assert document["progress"]["done"] < 24
    assert detect.status_code == 504
    assert "TASK_SOFT_TIME_LIMIT" in detect.json()["detail"]
    assert small.status_code == 200


def test_hard_time_limit_ends_worker(logs_dir: Path) -> None:
    limits = {"TASK_SOFT_TIME_LIMIT": "0", "TASK_HARD_TIME_LIMIT": "2"}
    with running_stack(logs_dir, "hard-limit", worker_env=limits) as stack, stack.client() as http:
        task_id = http.post("/tasks", json={"inputs": [large_photo()] * 24}).json()["task_id"]
        document = wait_final(http, task_id)
        exit_status = stack.workers[0].process.wait(timeout=30)

        # The message was never acknowledged. A fresh worker gets it after the
        # visibility timeout, finds the task failed and drops it without running it.
        replacement = stack.add_worker(BROKER_VISIBILITY_TIMEOUT="15")
        deadline = time.monotonic() + 60
        while stack.redis.hlen(Channel.unacked_key) and time.monotonic() < deadline:
            time.sleep(0.5)
        unacked = stack.redis.hlen(Channel.unacked_key)
        state_after = http.get(f"/tasks/{task_id}").json()["state"]

    assert document["state"] == "failed"
    assert document["errors"][0]["code"] == "time_limit_exceeded"
    assert "TASK_HARD_TIME_LIMIT" in document["errors"][0]["message"]
    assert exit_status == 3
    assert unacked == 0
    assert state_after == "failed"
    assert f"Task {task_id} is already failed" in replacement.log()
