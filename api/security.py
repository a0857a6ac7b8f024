"""Optional API keys: with API_KEYS set, every route but /health and /demo needs one."""

import hmac
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

# /demo is a static page without data; its own POST / calls still need a key.
OPEN_PATHS = frozenset({"/health", "/demo"})


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """Return the key from `Authorization: Bearer <key>` or `X-API-Key: <key>`, if any."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return headers.get(b"x-api-key") or None


def key_matches(candidate: bytes, keys: list[bytes]) -> bool:
    """Compare against every configured key in constant time, without stopping early."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


class ApiKeyMiddleware:
    """Reject requests without a valid key with 401.

    CORS preflights pass, because browsers send them without credentials.
    """

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in sorted(keys)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.keys
            or scope["path"] in OPEN_PATHS
            or scope["method"] == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return

        candidate = presented_key(dict(scope["headers"]))
        if candidate is not None and key_matches(candidate, self.keys):
            await self.app(scope, receive, send)
            return

        reason = "missing" if candidate is None else "invalid"
        client = scope.get("client") or ("-", 0)
        logger.warning("Rejected %s %s from %s: %s API key", scope["method"], scope["path"],
                       client[0], reason)  # fmt: skip
        response = JSONResponse(
            {
                "detail": f"API key {reason}. Send it as `Authorization: Bearer <key>` "
                "or `X-API-Key: <key>`; ask the operator for a key."
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
