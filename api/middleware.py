"""ASGI middleware that gives every request an id, used in logs and sent to the worker."""

import re
import uuid

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
