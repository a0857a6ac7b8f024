"""When to retry a request, and how long to wait before the next attempt."""

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

# Errors after which the request can be sent again: the connection failed or
# broke. Every request this client sends may be repeated without a second
# effect (submissions carry an Idempotency-Key). Read timeouts are not retried,
# because a request that outlived the client's timeout would likely do so again.
RETRYABLE_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    A 503 response, a 409 response with `Retry-After` (an idempotent submission
    still in flight) and the errors in RETRYABLE_ERRORS are retried. The wait
    is the response's `Retry-After` when it has one, else a random time between
    0 and `min(backoff_max, backoff_base * 2 ** (attempt - 1))` seconds.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    # A Retry-After longer than this ends the retries, so the caller is not
    # blocked for minutes; the error then carries the server's detail.
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}.")

    def backoff(self, attempt: int) -> float:
        """Return a jittered wait in seconds after failed attempt number `attempt` (from 1)."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    def delay_after_response(self, attempt: int, response: httpx.Response) -> float | None:
        """Return the seconds to wait before retrying `response`, or None to stop retrying."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        retryable = response.status_code == 503 or (
            response.status_code == 409 and retry_after is not None
        )
        if not retryable or attempt >= self.max_attempts:
            return None
        if retry_after is None:
            return self.backoff(attempt)
        return retry_after if retry_after <= self.max_retry_after else None

    def delay_after_error(self, attempt: int, error: httpx.TransportError) -> float | None:
        """Return the seconds to wait before retrying after `error`, or None to stop retrying."""
        if not isinstance(error, RETRYABLE_ERRORS) or attempt >= self.max_attempts:
            return None
        return self.backoff(attempt)


def parse_retry_after(value: str | None) -> float | None:
    """Return the wait in seconds that a `Retry-After` value (delay or HTTP date) sets, or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
