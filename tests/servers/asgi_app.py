"""The ASGI app (uvicorn, gunicorn's UvicornWorker, hypercorn): GET /bytes/N answers N bytes
fetched from the backend (backend_call.py), blocking the event loop while it does: a worker busy
with one request leaves the next connection to another worker."""

from __future__ import annotations

from typing import Any

from backend_call import fetch, headers, size_of


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    n = size_of(scope["path"])
    if n is None:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    body, backend = fetch(n)
    host, port = scope["client"]
    response = [(k.lower().encode(), v.encode()) for k, v in headers(body, f"{host}:{port}", backend)]
    await send({"type": "http.response.start", "status": 200, "headers": response})
    await send({"type": "http.response.body", "body": body})
