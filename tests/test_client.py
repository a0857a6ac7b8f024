"""The Python client and its command line against the real service."""

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from eventsnap_client import (
    AsyncEventsnapClient,
    ConflictError,
    EventsnapClient,
    InvalidInputError,
    NotFoundError,
    RequestFailedError,
    RetryPolicy,
    ServiceUnavailableError,
    encode_image,
)
from eventsnap_client.retry import parse_retry_after
from scripts.redis_server import free_port
from tests.conftest import ROOT, ServiceProcess
from tests.samples import b64, read, skimage_image, t1_jpg, vectron_image

FAST_RETRY = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05)


class LoopbackProxy:
    """A loopback HTTP server that returns 503 (Retry-After: 0) to the first `failures`
    requests and forwards the rest to the API, recording each request."""

    def __init__(self, api_url: str, failures: int = 0) -> None:
        self.api_url = api_url
        self.failures = failures
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        # SHA-256 of each image forwarded in a POST body, in order.
        self.forwarded_images: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with proxy.lock:
                    proxy.requests.append((self.command, self.path))
                    proxy.authorizations.append(self.headers.get("Authorization"))
                    fail = len(proxy.requests) <= proxy.failures
                if fail:
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    payload = b'{"detail": "The queue is full; retry later."}'
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return

                if self.command == "POST" and body:
                    inputs = json.loads(body).get("inputs", [])
                    with proxy.lock:
                        proxy.forwarded_images += [
                            hashlib.sha256(text.encode()).hexdigest() for text in inputs
                        ]
                forwarded_headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() in ("content-type", "authorization", "idempotency-key")
                }
                response = httpx.request(
                    self.command,
                    proxy.api_url + self.path,
                    content=body,
                    headers=forwarded_headers,
                    timeout=120,
                )
                self.send_response(response.status_code)
                for name in ("Content-Type", "Retry-After", "X-Request-ID"):
                    if name in response.headers:
                        self.send_header(name, response.headers[name])
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            do_GET = do_POST = do_DELETE = relay

        return Handler

    def __enter__(self) -> "LoopbackProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def image_digest(path: Path) -> str:
    return hashlib.sha256(b64(read(path)).encode()).hexdigest()


@pytest.fixture(scope="module")
def service_url(api: str, worker: ServiceProcess) -> str:
    """Base URL of the API with a worker running behind it."""
    return api


@pytest.fixture
def sync_client(service_url: str) -> Iterator[EventsnapClient]:
    with EventsnapClient(service_url) as client:
        yield client


def boxes(faces: list[Any]) -> list[list[float]]:
    return [face["bbox"] for face in faces]


def assert_same_faces(first: list[Any], second: list[Any]) -> None:
    assert len(first) == len(second)
    for face_a, face_b in zip(first, second, strict=True):
        assert face_a["bbox"] == pytest.approx(face_b["bbox"], abs=0.01)
        similarity = sum(
            a * b for a, b in zip(face_a["embedding"], face_b["embedding"], strict=True)
        )
        assert similarity > 0.999


def test_detect_t1_six_faces(sync_client: EventsnapClient) -> None:
    faces = sync_client.detect([t1_jpg()])

    assert len(faces) == 1
    assert len(faces[0]) == 6
    assert all(len(face["embedding"]) == 512 for face in faces[0])
    assert all(len(face["kps"]) == 5 for face in faces[0])


def test_detect_accepts_bytes_base64_and_paths(sync_client: EventsnapClient) -> None:
    data = read(t1_jpg())
    data_url = "data:image/jpeg;base64," + b64(data)

    faces = sync_client.detect([t1_jpg(), data, b64(data), data_url], max_faces=2)

    assert [len(image_faces) for image_faces in faces] == [2, 2, 2, 2]
    for image_faces in faces[1:]:
        assert_same_faces(image_faces, faces[0])


def test_submit_wait_matches_detect(sync_client: EventsnapClient) -> None:
    expected = sync_client.detect([t1_jpg(), skimage_image("astronaut.png")])

    task_id = sync_client.submit([t1_jpg(), skimage_image("astronaut.png")])
    document = sync_client.wait(task_id, poll_interval=0.2, timeout=300)

    assert document["task_id"] == task_id
    assert document["state"] == "succeeded", document["errors"]
    assert document["progress"] == {"done": 2, "total": 2}
    assert document["result"] is not None
    assert len(document["result"]) == 2
    for task_faces, detect_faces in zip(document["result"], expected, strict=True):
        assert task_faces is not None
        assert_same_faces(task_faces, detect_faces)


def test_submit_idempotency_key_returns_same_task(sync_client: EventsnapClient) -> None:
    key = f"client-test-{uuid.uuid4().hex}"
    first = sync_client.submit([skimage_image("astronaut.png")], idempotency_key=key)
    second = sync_client.submit([skimage_image("astronaut.png")], idempotency_key=key)

    assert second == first
    assert sync_client.wait(first, poll_interval=0.2, timeout=300)["state"] == "succeeded"


def test_cancel_queued_or_running_task(sync_client: EventsnapClient) -> None:
    # 32 photos take the CPU worker many seconds, so the task is still queued
    # or running when the DELETE arrives.
    task_id = sync_client.submit([t1_jpg()] * 32)
    document = sync_client.cancel(task_id)

    assert document["state"] == "cancelled"
    with pytest.raises(ConflictError) as raised:
        sync_client.cancel(task_id)
    assert raised.value.status_code == 409


def test_unknown_task_raises_not_found(sync_client: EventsnapClient) -> None:
    with pytest.raises(NotFoundError) as raised:
        sync_client.get_task("0" * 32)

    assert raised.value.status_code == 404
    assert "not found" in str(raised.value.detail)


def test_invalid_image_error_names_index(sync_client: EventsnapClient) -> None:
    with pytest.raises(InvalidInputError) as raised:
        sync_client.detect([t1_jpg(), b"this is not an image", skimage_image("astronaut.png")])

    error = raised.value
    assert error.status_code == 422
    assert error.input_indexes == [1]
    assert error.errors[0]["loc"] == ["body", "inputs", 1]
    assert "inputs.1" in str(error)


def test_invalid_parameter_raises_without_index(sync_client: EventsnapClient) -> None:
    with pytest.raises(InvalidInputError) as raised:
        sync_client.detect([t1_jpg()], det_conf=1.5)

    assert raised.value.input_indexes == []
    assert raised.value.errors[0]["loc"] == ["body", "det_conf"]


def test_async_client_detect_submit_wait(service_url: str) -> None:
    async def run() -> tuple[list[Any], dict[str, Any]]:
        async with AsyncEventsnapClient(service_url) as client:
            faces = await client.detect([t1_jpg()])
            task_id = await client.submit([t1_jpg()])
            document = await client.wait(task_id, poll_interval=0.2, timeout=300)
            return faces, dict(document)

    faces, document = asyncio.run(run())

    assert len(faces[0]) == 6
    assert document["state"] == "succeeded"
    assert_same_faces(document["result"][0], faces[0])


def test_async_client_invalid_image_error(service_url: str) -> None:
    async def run() -> None:
        async with AsyncEventsnapClient(service_url) as client:
            await client.detect([b"GIF89a broken"])

    with pytest.raises(InvalidInputError) as raised:
        asyncio.run(run())

    assert raised.value.input_indexes == [0]


def test_retry_after_two_503s(service_url: str) -> None:
    with (
        LoopbackProxy(service_url, failures=2) as proxy,
        EventsnapClient(proxy.url, retry=FAST_RETRY) as client,
    ):
        faces = client.detect([t1_jpg()])

    assert len(faces[0]) == 6
    assert proxy.requests == [("POST", "/")] * 3


def test_async_retry_after_two_503s(service_url: str) -> None:
    async def run(url: str) -> str:
        async with AsyncEventsnapClient(url, retry=FAST_RETRY) as client:
            return await client.submit([skimage_image("astronaut.png")])

    with LoopbackProxy(service_url, failures=2) as proxy:
        task_id = asyncio.run(run(proxy.url))

    assert len(task_id) == 32
    assert proxy.requests == [("POST", "/tasks")] * 3


def test_503_on_every_attempt_raises(service_url: str) -> None:
    with (
        LoopbackProxy(service_url, failures=100) as proxy,
        EventsnapClient(proxy.url, retry=FAST_RETRY) as client,
        pytest.raises(ServiceUnavailableError) as raised,
    ):
        client.detect([t1_jpg()])

    assert len(proxy.requests) == 3
    assert raised.value.status_code == 503
    assert "queue is full" in str(raised.value)


def test_connection_refused_retried_then_raises(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.WARNING, logger="eventsnap_client")

    with EventsnapClient(url, retry=FAST_RETRY) as client, pytest.raises(RequestFailedError):
        client.detect([b"unused"])

    retries = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) == 2


def test_api_key_sent_as_bearer(service_url: str) -> None:
    with (
        LoopbackProxy(service_url) as proxy,
        EventsnapClient(proxy.url, api_key="secret-key") as client,
        pytest.raises(NotFoundError),
    ):
        client.get_task("0" * 32)

    assert proxy.authorizations == ["Bearer secret-key"]


def test_retry_after_parsing() -> None:
    assert parse_retry_after("0") == 0
    assert parse_retry_after("7") == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_str_file_name_rejected() -> None:
    with pytest.raises(TypeError, match=r"pathlib\.Path"):
        encode_image("photo.jpg")
    with pytest.raises(TypeError, match="list"):
        EventsnapClient().detect(b"\xff\xd8")  # type: ignore[arg-type]


# The command line.


def make_photo_folder(folder: Path) -> None:
    (folder / "nested").mkdir(parents=True)
    (folder / "t1.jpg").write_bytes(read(t1_jpg()))
    (folder / "astronaut.png").write_bytes(read(skimage_image("astronaut.png")))
    (folder / "nested" / "yaoming.jpg").write_bytes(read(vectron_image("yaoming.jpg")))
    (folder / "broken.jpg").write_bytes(b"this file is not a JPEG")
    (folder / "notes.txt").write_text("not a photo, so never sent")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "eventsnap_client", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_embeds_folder_and_resumes(service_url: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    make_photo_folder(photos)
    out = tmp_path / "out" / "faces.jsonl"

    with LoopbackProxy(service_url) as proxy:
        first = run_cli("embed-folder", str(photos), str(out), "--url", proxy.url, "--batch", "2")
        assert first.returncode == 0, first.stderr
        first_sent = list(proxy.forwarded_images)

        second = run_cli("embed-folder", str(photos), str(out), "--url", proxy.url, "--quiet")
        assert second.returncode == 0, second.stderr
        second_sent = proxy.forwarded_images[len(first_sent) :]

    lines = read_lines(out)
    by_path = {line["path"]: line for line in lines}
    assert [line["path"] for line in lines] == [
        "astronaut.png",
        "broken.jpg",
        "nested/yaoming.jpg",
        "t1.jpg",
    ]
    assert len(by_path["t1.jpg"]["faces"]) == 6
    assert len(by_path["astronaut.png"]["faces"]) == 1
    assert len(by_path["nested/yaoming.jpg"]["faces"]) >= 1
    assert "faces" not in by_path["broken.jpg"]
    assert by_path["broken.jpg"]["error"]["code"].startswith("image_")
    assert set(first_sent) >= {image_digest(photos / "t1.jpg"), image_digest(photos / "broken.jpg")}
    assert second_sent == []
    assert "4 already in" in second.stderr


def test_cli_redoes_truncated_last_line(service_url: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    make_photo_folder(photos)
    out = tmp_path / "faces.jsonl"
    first = run_cli("embed-folder", str(photos), str(out), "--url", service_url, "--quiet")
    assert first.returncode == 0, first.stderr
    complete = out.read_bytes()
    last_line_start = complete.rstrip(b"\n").rfind(b"\n") + 1
    # A crash in the middle of writing the last line leaves part of it behind.
    out.write_bytes(complete[: last_line_start + 40])

    with LoopbackProxy(service_url) as proxy:
        rerun = run_cli("embed-folder", str(photos), str(out), "--url", proxy.url, "--quiet")

    assert rerun.returncode == 0, rerun.stderr
    assert proxy.forwarded_images == [image_digest(photos / "t1.jpg")]
    lines = read_lines(out)
    assert len(lines) == 4
    assert lines[-1]["path"] == "t1.jpg"
    assert len(lines[-1]["faces"]) == 6
    assert out.read_bytes()[:last_line_start] == complete[:last_line_start]


def test_cli_rejects_corrupt_middle_line(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "gray.png")
    out = tmp_path / "faces.jsonl"
    out.write_text('{"path": "a.jpg", "faces": []}\nnot json\n{"path": "b.jpg", "faces": []}\n')

    result = run_cli(
        "embed-folder", str(photos), str(out), "--url", f"http://127.0.0.1:{free_port()}"
    )

    assert result.returncode == 2
    assert "Line 2" in result.stderr
    assert out.read_text().count("\n") == 3


def test_cli_service_down_prints_resume_hint(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "gray.png")
    out = tmp_path / "faces.jsonl"

    result = run_cli(
        "embed-folder", str(photos), str(out), "--url", f"http://127.0.0.1:{free_port()}"
    )

    assert result.returncode == 1
    assert "resume" in result.stderr
    assert out.read_text() == ""
