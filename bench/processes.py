"""Start, watch and stop the processes under test: Redis, the API, workers and the baseline.

Every process listens on 127.0.0.1 only and writes its output to a log file
in the run's log folder, which the report names when something fails.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import redis

from common.contract import WORKER_KEY_PATTERN
from scripts.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 120.0


class ManagedProcess:
    """A child process with its log file; `stop` terminates it and waits."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self.log_file = log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        self.log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def peak_rss_bytes(self) -> int:
        """Return the peak resident memory of the process plus that of each live child."""
        return sum(peak_rss_of(pid) for pid in [self.pid, *child_pids(self.pid)])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()


def child_pids(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def peak_rss_of(pid: int) -> int:
    """Return VmHWM (peak resident set size) of a Linux process in bytes, 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    return 0


def child_env(**overrides: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.update(overrides)
    return env


def wait_for_http(
    process: ManagedProcess, base_url: str, timeout: float = STARTUP_TIMEOUT_S
) -> None:
    """Wait until GET /health answers 200, or raise with the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_running()
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"{process.name} did not answer GET /health within {timeout:.0f} s:\n{process.log_tail()}"
    )


def start_baseline(
    log_dir: Path, threads: int, provider: str, model_dir: Path | None
) -> tuple[ManagedProcess, str]:
    """Start the in-process baseline server on a free port; return it and its base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "bench.baseline_server", "--port", str(port),
        "--threads", str(threads), "--provider", provider,
    ]  # fmt: skip
    if model_dir is not None:
        command += ["--model-dir", str(model_dir)]
    process = ManagedProcess("baseline", command, child_env(), log_dir / "baseline.log")
    base_url = f"http://127.0.0.1:{port}"
    wait_for_http(process, base_url)
    return process, base_url


def start_worker(log_dir: Path, index: int, redis_url: str, env: dict[str, str]) -> ManagedProcess:
    """Start one Celery worker process, as the documented entry point runs it."""
    command = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
        "--without-mingle", "-n", f"bench-worker-{index}@%h",
    ]  # fmt: skip
    return ManagedProcess(
        f"worker {index}",
        command,
        child_env(REDIS_URL=redis_url, **env),
        log_dir / f"worker-{index}.log",
    )


def wait_for_workers(workers: list[ManagedProcess], redis_url: str) -> None:
    """Wait until every worker's heartbeat key (which ends in its pid) is in Redis."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    waiting = {worker.pid: worker for worker in workers}
    while waiting and time.monotonic() < deadline:
        keys = [key.decode() for key in client.scan_iter(match=WORKER_KEY_PATTERN)]
        for pid in list(waiting):
            waiting[pid].check_running()
            if any(key.endswith(f":{pid}") for key in keys):
                del waiting[pid]
        time.sleep(0.2)
    client.close()
    if waiting:
        names = ", ".join(worker.name for worker in waiting.values())
        raise RuntimeError(f"No heartbeat from {names} within {STARTUP_TIMEOUT_S:.0f} s")


def start_api(log_dir: Path, redis_url: str) -> tuple[ManagedProcess, str]:
    """Start the API with uvicorn on a free port; return it and its base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    process = ManagedProcess("API", command, child_env(REDIS_URL=redis_url), log_dir / "api.log")
    base_url = f"http://127.0.0.1:{port}"
    wait_for_http(process, base_url)
    return process, base_url
