"""`netstats demo`: a loopback HTTP server, a fetch, every event as it happens, a mark, totals."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from typing import Any

from ._capture import capture, mark
from ._record import Connection


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"x" * 4096
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _print_event(event: str, conn: Connection, nbytes: int | None) -> None:
    if event == "open":
        print(f"#{conn.id} opened ({conn.transport}) from {conn.caller or conn.origin}")
    elif event == "connect":
        print(f"#{conn.id} connected to {conn.remote}")
    elif event in ("read", "write"):
        print(f"#{conn.id} {event.replace('read', 'reading').replace('write', 'writing')} {nbytes} bytes")
    elif event == "close":
        print(f"#{conn.id} closed: read {conn.rx} bytes, written {conn.tx} bytes in {conn.duration:.4f}s")


def run() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with capture(_print_event) as cap, urllib.request.urlopen(url) as response:
            response.read(10)
            print("mark after the first bytes:", mark(response.fp.raw._sock, "first bytes"))
            response.read()
    finally:
        server.shutdown()
        server.server_close()
    print(f"\n{cap.count} connection(s): {cap.tx} bytes written, {cap.rx} bytes read")
    return 0
