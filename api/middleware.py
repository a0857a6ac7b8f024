"""ASGI middleware: request ids for logs and the worker, and the request body size limit."""

import re
import uuid

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.logs import request_id_var

HEADER = b"x-request-id"
# A caller's id is reused only if it is short and plain, so it cannot forge log lines.
SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Take X-Request-ID from the caller or make one; echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        supplied = dict(scope["headers"]).get(HEADER, b"").decode("latin-1")
        request_id = supplied if SAFE_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((HEADER, request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Reject request bodies over `limit` bytes with 413, for every route and content type.

    A declared Content-Length over the limit is rejected before the body is
    read. A streamed body is counted as it arrives, and the read that crosses
    the limit raises the 413 from inside the route.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": body_too_large(int(declared), self.limit)}, 413)
            await response(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, body_too_large(received, self.limit))
            return message

        await self.app(scope, counting_receive, send)


def body_too_large(size: int, limit: int) -> str:
    return (
        f"Request body of {size} bytes or more is over the limit of {limit} bytes "
        "(MAX_BODY_BYTES); send fewer or smaller images per request."
    )
