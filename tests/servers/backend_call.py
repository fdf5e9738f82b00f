"""What every app here does per request: fetch N bytes from the backend (an HTTP peer on
127.0.0.1, its port in BACKEND_PORT) on a new connection, closed after the answer; and hold
the worker a moment (HOLD), so that requests made together spread over the workers."""

from __future__ import annotations

import http.client
import os
import time

HOLD = 0.2  # seconds


def fetch(n: int) -> tuple[bytes, str]:
    """N bytes from the backend, and the outbound connection's local address as "host:port"."""
    time.sleep(HOLD)
    conn = http.client.HTTPConnection("127.0.0.1", int(os.environ["BACKEND_PORT"]), timeout=10)
    try:
        conn.request("GET", f"/bytes/{n}", headers={"Connection": "close"})
        host, port = conn.sock.getsockname()[:2]
        body = conn.getresponse().read()
    finally:
        conn.close()
    assert len(body) == n, (len(body), n)
    return body, f"{host}:{port}"


def size_of(path: str) -> int | None:
    """N of "/bytes/N", else None."""
    head, _, n = path.rpartition("/")
    return int(n) if head == "/bytes" and n.isdigit() else None


def headers(body: bytes, client: str, backend: str) -> list[tuple[str, str]]:
    """Who served this request, for the test: the worker's pid, the accepted connection's
    remote address as the server saw it, the outbound connection's local address."""
    return [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(len(body))),
        ("X-Pid", str(os.getpid())),
        ("X-Client", client),
        ("X-Backend", backend),
    ]
