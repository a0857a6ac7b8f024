"""A whole service stack of its own for fault tests: Redis, workers and an API process.

Fault tests kill workers and stop Redis, so they never use the session's shared
services. Every process listens on 127.0.0.1 only.
"""

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from common.contract import task_key
from scripts.redis_server import RedisServer, start_redis
from tests.conftest import ServiceProcess, start_api, start_worker, wait_for_worker


@dataclass
class Stack:
    """Redis, any number of workers and one API process, with their logs in `logs_dir`."""

    server: RedisServer
    logs_dir: Path
    name: str
    worker_env: dict[str, str]
    workers: list[ServiceProcess] = field(default_factory=list)
    api: ServiceProcess | None = None
    base_url: str = ""

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url)

    def add_worker(self, **env: str) -> ServiceProcess:
        """Start one more worker and wait for its heartbeat."""
        log_path = self.logs_dir / f"{self.name}-worker-{len(self.workers)}.log"
        worker = start_worker(self.server.url, log_path, **{**self.worker_env, **env})
        self.workers.append(worker)
        wait_for_worker(worker, self.redis)
        return worker

    def live_workers(self) -> list[ServiceProcess]:
        return [worker for worker in self.workers if worker.process.poll() is None]

    def start_api(self, **env: str) -> None:
        self.api, self.base_url = start_api(
            self.server.url, self.logs_dir / f"{self.name}-api.log", **env
        )

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def wait_until_running(self, task_id: str, timeout: float = 60) -> int:
        """Wait until a worker marks the task running; return that worker's pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state, worker = self.redis.hmget(task_key(task_id), ["state", "worker"])
            if state == b"running" and worker:
                return int(worker.decode().rsplit(":", 1)[1])
            time.sleep(0.05)
        raise AssertionError(f"task {task_id} was not running within {timeout} s")

    def kill_worker(self, pid: int) -> ServiceProcess:
        """SIGKILL the worker with this pid, as an out-of-memory kill would."""
        worker = next(worker for worker in self.workers if worker.process.pid == pid)
        os.kill(pid, signal.SIGKILL)
        worker.process.wait(timeout=30)
        return worker

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        for worker in self.workers:
            worker.stop()
        self.server.stop()


@contextmanager
def running_stack(
    logs_dir: Path,
    name: str,
    workers: int = 1,
    worker_env: dict[str, str] | None = None,
    api_env: dict[str, str] | None = None,
    server: RedisServer | None = None,
) -> Iterator[Stack]:
    """Start Redis (unless `server` is given), `workers` workers and the API; stop all after."""
    stack = Stack(server or start_redis(), logs_dir, name, worker_env or {})
    try:
        for _ in range(workers):
            stack.add_worker()
        stack.start_api(**(api_env or {}))
        yield stack
    finally:
        stack.stop()
