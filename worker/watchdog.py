"""The hard time limit: a thread that ends the worker process when one task runs too long.

Celery's own time limits need a pool with child processes; with
`--pool=solo` the task runs in the worker's main thread and a model call that
never returns cannot be interrupted. The watchdog marks such a task failed
and exits the process, so the container's restart policy starts a fresh one.
"""

import logging
import os
import threading
import time
from collections.abc import Callable

from common.logs import request_id_var

logger = logging.getLogger(__name__)

# Exit status of a worker ended by the watchdog, chosen to stand out in logs.
HARD_LIMIT_EXIT_STATUS = 3


class Watchdog:
    """Watches the running task's age and calls `on_expired(task_id)` then exits past `limit_s`."""

    def __init__(self, limit_s: float, on_expired: Callable[[str], None]) -> None:
        self.limit_s = limit_s
        self.on_expired = on_expired
        self.task_id: str | None = None
        self.request_id = "-"
        self.started = 0.0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    def start(self) -> None:
        if self.limit_s:
            self.thread.start()

    def begin(self, task_id: str, request_id: str) -> None:
        with self.lock:
            self.task_id = task_id
            self.request_id = request_id
            self.started = time.monotonic()

    def end(self) -> None:
        with self.lock:
            self.task_id = None

    def _expired_task(self) -> str | None:
        with self.lock:
            if self.task_id is not None and time.monotonic() - self.started > self.limit_s:
                return self.task_id
        return None

    def _loop(self) -> None:
        interval = min(1.0, self.limit_s / 4)
        while True:
            time.sleep(interval)
            task_id = self._expired_task()
            if task_id is None:
                continue
            request_id_var.set(self.request_id)
            logger.critical(
                "Task %s ran longer than TASK_HARD_TIME_LIMIT (%g s); marking it failed and "
                "exiting the worker process with status %d",
                task_id,
                self.limit_s,
                HARD_LIMIT_EXIT_STATUS,
            )
            try:
                self.on_expired(task_id)
            except Exception:
                logger.exception("Task %s: recording the hard time limit failed", task_id)
            # os._exit skips Celery's shutdown, which would wait for the stuck task.
            # The message stays unacknowledged and is redelivered, and its worker
            # then finds the task final and acknowledges it without running it.
            os._exit(HARD_LIMIT_EXIT_STATUS)
