"""One log format for the API and the workers, with the request id on every line.

`configure_logging` is called once, at each process's entry point. The request
id lives in a context variable: the API sets it per request, the worker per
task, so every line logged while handling them carries it.
"""

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


# The request id inside the repr of a task's keyword arguments, as Celery logs them.
CELERY_KWARGS_REQUEST_ID = re.compile(r"'request_id': '([A-Za-z0-9._:-]{1,64})'")


def celery_request_id(record: logging.LogRecord) -> str | None:
    """Return the request id of the task that a Celery log record is about, if any.

    Celery logs "Task ... received" and "Task ... succeeded" outside the task's
    own code, with the task's keyword arguments (as a repr) in `record.data`,
    and at DEBUG level whole messages with those arguments in the text.
    """
    if not record.name.startswith("celery"):
        return None
    data = getattr(record, "data", None)
    text = str(data.get("kwargs", "")) if isinstance(data, dict) else record.getMessage()
    match = CELERY_KWARGS_REQUEST_ID.search(text)
    return match.group(1) if match else None


class RequestIdFilter(logging.Filter):
    """Copy the current request id onto each record as `record.request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id == "-":
            request_id = celery_request_id(record) or request_id
        record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send all logs to stderr in the chosen format; replaces existing root handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
