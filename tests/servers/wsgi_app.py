"""The WSGI app (gunicorn, uWSGI, granian, waitress): GET /bytes/N answers N bytes fetched
from the backend (backend_call.py); any other path 404."""

from __future__ import annotations

from typing import Any

from backend_call import fetch, headers, size_of


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    n = size_of(environ["PATH_INFO"])
    if n is None:
        start_response("404 Not Found", [("Content-Length", "0")])
        return []
    body, backend = fetch(n)
    client = f"{environ['REMOTE_ADDR']}:{environ.get('REMOTE_PORT', '')}"
    start_response("200 OK", headers(body, client, backend))
    return [body]


application = app  # uWSGI's default name
