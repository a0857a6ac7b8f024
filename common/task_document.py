"""The task document of an asynchronous task, as GET /tasks/{id} and the webhook send it.

The API and the webhook delivery task build it from the same Redis keys with
these functions, so a webhook receiver gets exactly what a poller would see.
The stored result bytes are embedded as they are (`orjson.Fragment`), never
parsed and serialised again.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

TASK_KIND = "task"
"""Value of the `kind` field for tasks submitted through POST /tasks."""

CALLBACK_FIELD = "callback_url"
WEBHOOK_CLAIM_FIELD = "webhook_enqueued_at"

CLAIM_WEBHOOK_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
return redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
"""
"""Lua script that claims a task's webhook delivery; returns 1 to exactly one caller.

KEYS[1] is the task hash, ARGV is (CALLBACK_FIELD, WEBHOOK_CLAIM_FIELD, now).
Tasks without a callback URL, and expired tasks, return 0 and write nothing,
so the script never creates a hash without a TTL.
"""


def iso_utc(timestamp: bytes | None) -> str | None:
    """Convert a stored Unix time in seconds to ISO 8601 UTC with milliseconds."""
    if not timestamp:
        return None
    moment = datetime.fromtimestamp(float(timestamp), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_document(
    task_id: str, fields: Mapping[bytes, bytes], result: bytes | None
) -> dict[str, Any]:
    """Build the task document from the task hash and the stored result bytes.

    `result` is included only when the task succeeded. It is embedded as an
    `orjson.Fragment`, so serialise the document with `dump_task_document`.
    """
    state = fields[b"state"].decode()
    errors = fields.get(b"errors")
    return {
        "task_id": task_id,
        "state": state,
        "progress": {"done": int(fields.get(b"done", 0)), "total": int(fields[b"total"])},
        "result": orjson.Fragment(result) if state == "succeeded" and result else None,
        "errors": orjson.Fragment(errors) if errors else [],
        "created_at": iso_utc(fields.get(b"created_at")),
        "started_at": iso_utc(fields.get(b"started_at")),
        "finished_at": iso_utc(fields.get(b"finished_at")),
    }


def dump_task_document(document: Mapping[str, Any]) -> bytes:
    """Serialise a task document to JSON bytes."""
    return orjson.dumps(document)
