"""The worker's heartbeat: a Redis key with a TTL that shows the worker is alive and what it runs.

The API's readiness check and `/info` read these keys; the container health
check reads this worker's own key.
"""

import logging
import threading
import time
from importlib.metadata import PackageNotFoundError, version

import orjson
import redis

from common.contract import worker_key
from worker.lease import DeliveryLease

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
# A heartbeat older than three intervals means the worker is gone or stuck.
HEARTBEAT_TTL_S = 15


def package_version(name: str) -> str | None:
    """Return an installed distribution's version, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


class Heartbeat:
    """A daemon thread that refreshes this worker's key and its message lease until stopped."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        info: dict[str, object],
        lease: DeliveryLease | None = None,
    ) -> None:
        self.redis = client
        self.lease = lease
        self.key = worker_key(name)
        self.info = {**info, "name": name, "started_at": time.time()}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self.failing = False

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread and remove the key, so the API stops counting this worker."""
        self.stopped.set()
        self.thread.join(timeout=HEARTBEAT_INTERVAL_S)
        try:
            self.redis.delete(self.key)
        except redis.RedisError as error:
            logger.warning("Could not remove heartbeat key %s: %s", self.key, error)

    def beat(self) -> None:
        document = {**self.info, "beat_at": time.time()}
        self.redis.set(self.key, orjson.dumps(document), ex=HEARTBEAT_TTL_S)
        if self.lease is not None:
            self.lease.renew()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                self.beat()
                if self.failing:
                    logger.info("Heartbeat restored: Redis reachable again")
                self.failing = False
            except redis.RedisError as error:
                if not self.failing:
                    logger.error("Heartbeat failed, Redis unreachable: %s; retrying", error)
                self.failing = True
            self.stopped.wait(HEARTBEAT_INTERVAL_S)
