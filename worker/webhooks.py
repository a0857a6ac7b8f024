"""Webhook delivery: POST a finished task's document to its callback URL, signed.

The signed message is the Unix time in seconds from `X-Eventsnap-Timestamp`,
a full stop, and the raw request body. `X-Eventsnap-Signature` carries
`sha256=` and the lower-case hex HMAC-SHA256 of that message under
WEBHOOK_SECRET. A receiver that rejects old timestamps also rejects replays.

Retries belong to the Celery task that calls `deliver`, which raises
WebhookDeliveryError for every failed attempt.
"""

import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import redis

from common.contract import result_key, task_key
from common.task_document import (
    CALLBACK_FIELD,
    CLAIM_WEBHOOK_SCRIPT,
    WEBHOOK_CLAIM_FIELD,
    dump_task_document,
    task_document,
)

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Eventsnap-Signature"
TIMESTAMP_HEADER = "X-Eventsnap-Timestamp"
TASK_ID_HEADER = "X-Eventsnap-Task-Id"
USER_AGENT = "eventsnap-webhook/0.1"


class WebhookDeliveryError(Exception):
    """One delivery attempt failed: the connection failed or the answer was not 2xx."""


class RejectRedirects(urllib.request.HTTPRedirectHandler):
    """Treat a 3xx answer as a failed delivery instead of following it.

    Following a redirect would let an allowed host send the document to a host
    that WEBHOOK_ALLOWED_HOSTS does not list.
    """

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# An empty ProxyHandler ignores HTTP(S)_PROXY, so a delivery goes straight to
# the allowed host that the API checked.
OPENER = urllib.request.build_opener(RejectRedirects(), urllib.request.ProxyHandler({}))


def url_for_logs(url: str) -> str:
    """Drop the query and fragment, which may carry a receiver's token, from a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """Return the signature header value for a body sent at `timestamp`."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def claim_delivery(client: redis.Redis, task_id: str) -> bool:
    """Claim the webhook of a finished task; True for exactly one caller per task.

    False when the task has no callback URL, has expired, or another process
    (the API, or a worker that ran the task before) already claimed it.
    """
    claimed = client.eval(
        CLAIM_WEBHOOK_SCRIPT,
        1,
        task_key(task_id),
        CALLBACK_FIELD,
        WEBHOOK_CLAIM_FIELD,
        str(time.time()),
    )
    return bool(claimed)


def release_delivery(client: redis.Redis, task_id: str) -> None:
    """Undo `claim_delivery` after the delivery task could not be sent."""
    client.hdel(task_key(task_id), WEBHOOK_CLAIM_FIELD)


def deliver(
    client: redis.Redis,
    task_id: str,
    secret: bytes | None,
    timeout: float,
    attempt: int,
) -> None:
    """POST the current task document to the task's callback URL once.

    Raises WebhookDeliveryError when the attempt fails. A task that has
    expired, or that has no callback URL, is logged and skipped.
    """
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(task_key(task_id))
    pipe.get(result_key(task_id))
    fields, result = pipe.execute()
    url_bytes = fields.get(CALLBACK_FIELD.encode()) if fields else None
    if not url_bytes:
        logger.warning("Task %s: no task document or callback URL left; webhook skipped", task_id)
        return

    url = url_bytes.decode()
    shown_url = url_for_logs(url)
    body = dump_task_document(task_document(task_id, fields, result))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        TASK_ID_HEADER: task_id,
    }
    if secret is not None:
        timestamp = str(int(time.time()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with OPENER.open(request, timeout=timeout) as response:
            status: int = response.status
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
    except (OSError, ValueError) as error:
        logger.warning(
            "Task %s: webhook attempt %d to %s failed: %s", task_id, attempt, shown_url, error
        )
        raise WebhookDeliveryError(f"POST {shown_url} failed: {error}") from error

    if not 200 <= status < 300:
        logger.warning(
            "Task %s: webhook attempt %d to %s failed: HTTP %d",
            task_id,
            attempt,
            shown_url,
            status,
        )
        raise WebhookDeliveryError(f"POST {shown_url} answered HTTP {status}")
    logger.info("Task %s: webhook delivered to %s on attempt %d", task_id, shown_url, attempt)
