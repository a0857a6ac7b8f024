"""Read request bodies with a size limit, so an oversized upload is rejected early."""

from fastapi import HTTPException, Request

from api.middleware import body_too_large


async def read_body(request: Request, limit: int) -> bytes:
    """Return the body, or raise 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, body_too_large(int(declared), limit))

    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPException(413, body_too_large(received, limit))
        chunks.append(chunk)
    return b"".join(chunks)
