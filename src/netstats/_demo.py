"""`netstats demo`: the main job on an embedded default, offline, in a few seconds.

It starts a loopback HTTP server and an HTTPS server (a throwaway certificate embedded below,
valid for localhost and 127.0.0.1 only), fetches from both with urllib and with asyncio, prints
each event as it happens, sets and shows marks, tags each step (netstats.tag) and shows its bytes,
then prints the report of the run and where to look next.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import ssl
import tempfile
import threading
import time
import urllib.request
from typing import Any

from ._api import mark
from ._capture import Capture
from ._format import duration, size
from ._record import Connection
from ._report import Run, render_text
from ._tagging import tag

# A self-signed certificate made for this demo (openssl, P-256, valid until 2126). It protects
# nothing: both ends are in this process, on loopback.
DEMO_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg54K/x3q2+0zB0NKK
xfWFWiY2KTYmqXMH+bSMVh7v7/ChRANCAAQ5Hyap94q2LCl7O338BSn5fqDLbCsU
NkVmgtNjBEdNPuVsxIYNd87LOjcPBajJxxmdutaSDuQqIFZzJyjRyjkN
-----END PRIVATE KEY-----
"""
DEMO_CERT = """\
-----BEGIN CERTIFICATE-----
MIIB1jCCAXygAwIBAgIUVDeToSiy8xDhvkSGfYwXhf/YYwUwCgYIKoZIzj0EAwIw
MzExMC8GA1UEAwwobmV0c3RhdHMgZGVtbyAodGhyb3dhd2F5LCBsb29wYmFjayBv
bmx5KTAgFw0yNjExMjYxMTAzMjdaGA8yMTI2MTEwMjExMDMyN1owMzExMC8GA1UE
AwwobmV0c3RhdHMgZGVtbyAodGhyb3dhd2F5LCBsb29wYmFjayBvbmx5KTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABDkfJqn3irYsKXs7ffwFKfl+oMtsKxQ2RWaC
02MER00+5WzEhg13zss6Nw8FqMnHGZ261pIO5CogVnMnKNHKOQ2jbDBqMB0GA1Ud
DgQWBBTqhaIbT3hIiVLAbk9Djqr3qRUynTAfBgNVHSMEGDAWgBTqhaIbT3hIiVLA
bk9Djqr3qRUynTAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwDAYDVR0TAQH/
BAIwADAKBggqhkjOPQQDAgNIADBFAiApOuKnRri8rS9mjJCou+gQJWLwFyX8c4rV
azGrpd59FgIhAOcFok5dkC06x6hBoE+vHdrjmCCBKk2pYikpYm2pkrNX
-----END CERTIFICATE-----
"""
BODY = b"netstats demo " * 2000  # 28,000 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _servers() -> tuple[list[http.server.ThreadingHTTPServer], int, int]:
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "demo.pem")
        with open(path, "w") as f:
            f.write(DEMO_KEY + DEMO_CERT)
        context.load_cert_chain(path)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return [plain, secure], plain.server_address[1], secure.server_address[1]


def _show(event: str, conn: Connection, nbytes: int | None) -> None:
    name = f"#{conn.id}"
    if event == "open":
        where = conn.host or "{}:{}".format(*conn.remote)
        print(f"{name} opened: {conn.transport} to {where}")
    elif event == "connect":
        print(f"{name} connected to {conn.remote[0]}:{conn.remote[1]}")
    elif event == "read":
        print(f"{name} reading {nbytes} bytes")
    elif event == "write":
        print(f"{name} writing {nbytes} bytes")
    elif event == "close":
        tls = f" over {conn.tls}" if conn.tls else ""
        print(f"{name} closed{tls}: read {conn.rx} bytes, written {conn.tx} bytes")


def _show_mark(name: str, since: dict[str, Any]) -> None:
    print(f"   mark {name!r}: tx {size(since['tx'])}, rx {size(since['rx'])} in {duration(since['elapsed'])}")


async def _fetch_async(port: int, context: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection("localhost", port, ssl=context)
    writer.write(f"GET /async HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    sock = writer.get_extra_info("socket")
    _show_mark("request sent", mark(sock, "request sent"))
    await reader.read()
    _show_mark("response read", mark(sock, "response read"))
    writer.close()
    await writer.wait_closed()


def run() -> int:
    servers, plain_port, tls_port = _servers()
    client = ssl.create_default_context(cadata=DEMO_CERT)
    started = time.time()
    try:
        with Capture(_show) as cap:
            with tag(step="urllib"):
                print(f"-- urllib, http://127.0.0.1:{plain_port}/  (tagged step=urllib)")
                urllib.request.urlopen(f"http://127.0.0.1:{plain_port}/", timeout=5).read()
                print(f"-- urllib, https://localhost:{tls_port}/  (tagged step=urllib)")
                urllib.request.urlopen(f"https://localhost:{tls_port}/", timeout=5, context=client).read()
            with tag(step="asyncio"):
                print(f"-- asyncio, https://localhost:{tls_port}/async, with marks  (tagged step=asyncio)")
                asyncio.run(_fetch_async(tls_port, client))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    result = Run(
        program=["netstats", "demo"],
        pid=os.getpid(),
        started=started,
        finished=time.time(),
        exit_code=0,
        connections=[c.as_dict() for c in cap.connections],
    )
    print()
    print("-- bytes per netstats.tag(step=...), from every connection's reads and writes:")
    for value, row in cap.by_tag("step").items():
        if value is not None or row["rx"] or row["tx"]:
            print(f"   {value or '(untagged)':<10} tx {size(row['tx'])}, rx {size(row['rx'])}")
    print()
    print(render_text(result), end="")
    print()
    print("Next: netstats run --html timeline.html script.py (a waterfall of every connection's DNS,")
    print("connect, TLS, wait and transfer), --wide (those phases as columns), --live (a live table),")
    print("netstats top PID (any process's connections, from the kernel).")
    return 0
