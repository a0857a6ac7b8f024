"""Run the whole service locally: Redis (unless REDIS_URL is set), one worker, the API on :5000.

Ctrl-C stops all of it. The worker uses the embedded models unless MODEL_DIR
or MODEL_PACK is set.
"""

import logging
import os
import signal
import subprocess
import sys
import time

from scripts.redis_server import RedisServer, start_redis

logger = logging.getLogger("run_stack")

API_PORT = os.environ.get("PORT", "5000")
# Loopback unless HOST is set, because a local run has no API keys and should
# not be reachable from other machines by default.
API_HOST = os.environ.get("HOST", "127.0.0.1")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    redis_server: RedisServer | None = None
    env = dict(os.environ)
    if "REDIS_URL" not in env:
        redis_server = start_redis()
        env["REDIS_URL"] = redis_server.url
        logger.info("Started Redis at %s (set REDIS_URL to use your own)", redis_server.url)

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
         "--pool=solo", "--concurrency=1", "--loglevel=INFO"],
        env=env,
    )  # fmt: skip
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", API_HOST, "--port", API_PORT],
        env=env,
    )
    logger.info(
        "API on http://%s:%s, worker pid %d; Ctrl-C stops all", API_HOST, API_PORT, worker.pid
    )

    children = [api, worker]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.5)

    exit_code = 0
    for child in children:
        if child.poll() is not None and not stopping:
            logger.error(
                "%s exited with code %s; stopping the rest", child.args[2], child.returncode
            )
            exit_code = 1
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    if redis_server is not None:
        redis_server.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
