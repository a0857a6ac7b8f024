"""Operations and other callers: readiness, /info, metrics, JSON logs, API keys, CORS,
the serverless request shape, multipart uploads and the OpenAPI schema."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from scripts.redis_server import RedisServer, free_port, start_redis
from tests.conftest import ServiceProcess, start_api, start_worker, wait_for_worker
from tests.samples import b64, read, t1_jpg, vectron_image

KEY = "test-key-2"


@dataclass
class SideStack:
    """Its own Redis, worker and API, with JSON logs, API keys, CORS and worker metrics."""

    redis: RedisServer
    worker: ServiceProcess
    api: ServiceProcess
    base_url: str
    metrics_port: int

    def client(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def side(logs_dir: Path) -> Iterator[SideStack]:
    server = start_redis()
    metrics_port = free_port()
    worker = start_worker(
        server.url,
        logs_dir / "worker-side.log",
        LOG_FORMAT="json",
        WORKER_METRICS_PORT=str(metrics_port),
    )
    wait_for_worker(worker, redis.Redis.from_url(server.url))
    api, base_url = start_api(
        server.url,
        logs_dir / "api-side.log",
        LOG_FORMAT="json",
        API_KEYS=f"test-key-1, {KEY}",
        CORS_ORIGINS="https://app.example.com",
    )
    yield SideStack(server, worker, api, base_url, metrics_port)
    api.stop()
    worker.stop()
    server.stop()


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_info_lists_live_workers(client: httpx.Client) -> None:
    response = client.get("/info")

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == "0.1.0"
    assert isinstance(body["queue_depth"], int)
    worker = body["workers"][0]
    assert worker["provider"] == "CPUExecutionProvider"
    assert worker["onnxruntime"] == "1.24.1"
    assert worker["detector"] == "scrfd_500m_bnkps.onnx"


def test_metrics_count_requests_by_route(client: httpx.Client) -> None:
    assert client.post("/", json={"inputs": [b64(read(t1_jpg()))]}).status_code == 200
    assert client.get("/tasks/not-a-task").status_code == 404

    text = client.get("/metrics").text

    assert 'eventsnap_http_requests_total{method="POST",route="/",status="200"}' in text
    assert 'eventsnap_http_requests_total{method="GET",route="/tasks/{task_id}",status="404"}' in (
        text
    )
    assert "not-a-task" not in text
    assert 'eventsnap_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/"}' in (
        text
    )
    assert "eventsnap_queue_depth 0.0" in text
    assert "eventsnap_live_workers" in text


def test_worker_metrics_served_on_own_port(side: SideStack) -> None:
    with side.client() as http:
        assert http.post("/", json={"inputs": [b64(read(t1_jpg()))]}).status_code == 200

    text = httpx.get(f"http://127.0.0.1:{side.metrics_port}/metrics", timeout=10).text

    assert 'eventsnap_worker_images_total{outcome="succeeded"} 1.0' in text
    assert "eventsnap_worker_faces_total 6.0" in text
    assert 'eventsnap_worker_tasks_total{state="succeeded"} 1.0' in text
    for stage in ("decode", "detect", "align", "embed"):
        assert f'eventsnap_worker_stage_seconds_count{{stage="{stage}"}} 1.0' in text
    assert 'eventsnap_worker_recognizer_batch_faces_bucket{le="8.0"} 1.0' in text


def test_request_id_reaches_worker_json_log(side: SideStack) -> None:
    photo = b64(read(vectron_image("yaoming.jpg")))
    with side.client() as http:
        response = http.post("/", json={"inputs": [photo]}, headers={"X-Request-ID": "trace-77"})
    assert response.status_code == 200
    embedding_value = repr(response.json()[0][0]["embedding"][0])

    api_lines = [line for line in json_lines(side.api.log()) if line["request_id"] == "trace-77"]
    worker_log = side.worker.log()
    worker_lines = [line for line in json_lines(worker_log) if line["request_id"] == "trace-77"]

    assert any("queued" in line["message"] for line in api_lines)
    assert any("succeeded" in line["message"] for line in worker_lines)
    assert {line["level"] for line in worker_lines} <= {"INFO", "WARNING"}
    assert photo[100:160] not in worker_log + side.api.log()
    assert embedding_value not in worker_log + side.api.log()


def test_missing_api_key_gets_401(side: SideStack) -> None:
    with side.client(key=None) as http:
        response = http.post("/", json={"inputs": [b64(read(t1_jpg()))]})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key missing" in response.json()["detail"]


def test_wrong_api_key_gets_401(side: SideStack) -> None:
    with side.client(key="test-key-3") as http:
        response = http.get("/ready")

    assert response.status_code == 401
    assert "API key invalid" in response.json()["detail"]


def test_api_key_accepted_in_both_headers(side: SideStack) -> None:
    with side.client(key=None) as http:
        bearer = http.get("/ready", headers={"Authorization": "Bearer test-key-1"})
        header = http.get("/ready", headers={"X-API-Key": KEY})

    assert bearer.status_code == 200
    assert header.status_code == 200


def test_health_needs_no_api_key(side: SideStack) -> None:
    with side.client(key=None) as http:
        assert http.get("/health").status_code == 200


def test_cors_preflight_allows_configured_origin(side: SideStack) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with side.client(key=None) as http:
        allowed = http.options("/", headers={"Origin": "https://app.example.com", **preflight})
        other = http.options("/", headers={"Origin": "https://evil.example.net", **preflight})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in other.headers


def test_serverless_parameters_shape(client: httpx.Client) -> None:
    body = {"inputs": [b64(read(vectron_image("players.jpg")))], "parameters": {"max_faces": 2}}
    response = client.post("/", json=body)

    assert response.status_code == 200
    assert len(response.json()[0]) == 2


def test_serverless_parameters_override_top_level(client: httpx.Client) -> None:
    body = {
        "inputs": [b64(read(vectron_image("players.jpg")))],
        "max_faces": 5,
        "parameters": {"max_faces": 1},
    }
    response = client.post("/", json=body)

    assert len(response.json()[0]) == 1


def test_serverless_bad_parameter_located(client: httpx.Client) -> None:
    body = {"inputs": [b64(read(t1_jpg()))], "parameters": {"det_conf": 2}}
    response = client.post("/", json=body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "parameters", "det_conf"]


def test_multipart_upload_returns_faces(client: httpx.Client) -> None:
    files = [
        ("files", ("t1.jpg", read(t1_jpg()), "image/jpeg")),
        ("files", ("yaoming.jpg", read(vectron_image("yaoming.jpg")), "image/jpeg")),
    ]
    response = client.post("/upload", files=files, data={"max_faces": "4"})

    assert response.status_code == 200
    assert [len(faces) for faces in response.json()] == [4, 1]


def test_multipart_bad_file_located(client: httpx.Client) -> None:
    files = [
        ("files", ("t1.jpg", read(t1_jpg()), "image/jpeg")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
    ]
    response = client.post("/upload", files=files)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "files", 1]
    assert detail[0]["type"] == "image_format_unsupported"


def test_multipart_bad_parameter_rejected(client: httpx.Client) -> None:
    files = [("files", ("t1.jpg", read(t1_jpg()), "image/jpeg"))]
    response = client.post("/upload", files=files, data={"det_conf": "7"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "det_conf"]


def test_openapi_documents_every_route(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]

    assert set(paths) >= {"/", "/upload", "/tasks", "/tasks/{task_id}", "/health", "/ready",
                          "/info", "/metrics"}  # fmt: skip
    detect = paths["/"]["post"]
    assert {"200", "413", "422", "503", "504"} <= set(detect["responses"])
    example = detect["requestBody"]["content"]["application/json"]["schema"]["examples"][0]
    assert set(example) >= {"inputs", "max_faces", "det_conf", "nms_thresh"}
    assert {"200", "413", "422", "503", "504"} <= set(paths["/upload"]["post"]["responses"])
    assert "multipart/form-data" in paths["/upload"]["post"]["requestBody"]["content"]
    for path, methods in paths.items():
        for method, operation in methods.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            assert operation.get("description"), f"{method.upper()} {path} has no description"


def test_health_answers_head(client: httpx.Client) -> None:
    response = client.head("/health")

    assert response.status_code == 200
