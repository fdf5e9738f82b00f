"""trio and anyio on trio: application bytes exact (the plaintext for SSLStream), clients and
accepted server connections, whether trio was imported before the capture or during it.

trio binds socket methods at import, so each case runs in a fresh interpreter (CHILD below,
`python -c`) that imports trio before or during its capture and prints the connections it
captured as JSON. Every expected figure comes from the peer's own count (tests/peers.py) or,
for the trio servers, from the test's own stdlib client: never from netstats.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from typing import Any

import pytest
from helpers import MODES, drain

pytest.importorskip("trio")
pytest.importorskip("anyio")

N = 100_000  # bytes sent; the echo peer sends them back
TIMEOUT = 60

CHILD = r"""
import json, sys
kind, order, mode, port, ca_file, cert_file = sys.argv[1:7]
N = int(sys.argv[7])
if order == "before":
    import trio, anyio
import netstats
def callback(event, conn, nbytes):
    pass
events = {"open", "connect", "close"} if mode == "kernel-counted" else None
cap = netstats.capture(callback, events=events, servers=True)
cap.__enter__()
if order == "during":
    import trio, anyio
import ssl

def client_context():
    return ssl.create_default_context(cafile=ca_file)

async def exchange(send, receive):
    await send(b"x" * N)
    got = 0
    while got < N:
        chunk = await receive(65536)
        assert chunk, "peer closed early"
        got += len(chunk)

async def trio_client(tls):
    stream = await trio.open_tcp_stream("127.0.0.1", int(port))
    if tls:
        stream = trio.SSLStream(stream, client_context(), server_hostname="localhost")
    await exchange(stream.send_all, stream.receive_some)
    await stream.aclose()

async def anyio_client(tls):
    kwargs = {}
    if tls:  # (the echo peer closes without TLS's close_notify)
        kwargs = dict(tls=True, ssl_context=client_context(), tls_hostname="localhost")
        kwargs["tls_standard_compatible"] = False
    async with await anyio.connect_tcp("127.0.0.1", int(port), **kwargs) as stream:
        await exchange(stream.send, lambda n: stream.receive(n))

async def trio_server(tls):
    # One connection: read N bytes, answer N, close; the test's stdlib client counts them.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(json.dumps({"port": listeners[0].socket.getsockname()[1]}), flush=True)
    stream = await listeners[0].accept()
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file)
        stream = trio.SSLStream(stream, context, server_side=True)
    got = 0
    while got < N:
        chunk = await stream.receive_some(65536)
        assert chunk
        got += len(chunk)
    await stream.send_all(b"y" * N)
    await stream.aclose()
    await listeners[0].aclose()

runs = {
    "trio-client": lambda: trio.run(trio_client, False),
    "trio-tls-client": lambda: trio.run(trio_client, True),
    "anyio-client": lambda: anyio.run(anyio_client, False, backend="trio"),
    "anyio-tls-client": lambda: anyio.run(anyio_client, True, backend="trio"),
    "trio-server": lambda: trio.run(trio_server, False),
    "trio-tls-server": lambda: trio.run(trio_server, True),
}
runs[kind]()
cap.__exit__(None, None, None)
records = [
    {"side": c.side, "rx": c.rx, "tx": c.tx, "source": c.source, "tls": c.tls, "error": c.error}
    for c in cap.connections if c.error is None
]
if kind.endswith("client"):
    runs[kind]()  # after the capture: trio's methods are the stock ones again, no error
print(json.dumps(records), flush=True)
"""


def run_child(kind: str, order: str, mode: str, port: int, ca_file: str, cert_file: str) -> Any:
    args = [kind, order, mode, str(port), ca_file, cert_file, str(N)]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def one_client(records: list[dict[str, Any]]) -> dict[str, Any]:
    (record,) = [r for r in records if r["side"] == "client"]
    return record


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ["before", "during"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("library", ["trio", "anyio"])
def test_client_counts_application_bytes_exactly(
    peer: Any, ca_file: str, cert_file: str, library: str, tls: bool, order: str, mode: str
) -> None:
    echo = peer("echo", tls=tls)
    kind = f"{library}-{'tls-' if tls else ''}client"
    record = one_client(run_child(kind, order, mode, echo.port, ca_file, cert_file))
    (captured, after) = echo.wait_closed(2)  # the run under the capture, then the one after it
    assert (record["rx"], record["tx"]) == (captured["tx"], captured["rx"]) == (N, N)
    assert after["rx"] == N  # the program worked the same once the capture stopped
    assert record["source"] == "python"
    assert (record["tls"] is not None) == tls


def talk(port: int, tls: bool, ca_file: str) -> tuple[int, int]:
    """Connect to the trio server the child started; (bytes sent, bytes received), our own count."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock: Any = raw
    if tls:
        sock = ssl.create_default_context(cafile=ca_file).wrap_socket(raw, server_hostname="localhost")
    with sock:
        sock.sendall(b"x" * N)
        received = len(drain(sock, N))
    return N, received


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ["before", "during"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_accepted_connection_counts_application_bytes_exactly(
    ca_file: str, cert_file: str, tls: bool, order: str, mode: str
) -> None:
    kind = "trio-tls-server" if tls else "trio-server"
    args = [kind, order, mode, "0", ca_file, cert_file, str(N)]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    result: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        talker = threading.Thread(target=lambda: result.update(io=talk(port, tls, ca_file)))
        talker.start()
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    talker.join(TIMEOUT)
    assert proc.returncode == 0, stderr
    assert "internal error" not in stderr, stderr
    sent, received = result["io"]
    (record,) = [r for r in json.loads(stdout.splitlines()[-1]) if r["side"] == "server"]
    assert (record["rx"], record["tx"]) == (sent, received) == (N, N)
    assert record["source"] == "python"
    assert (record["tls"] is not None) == tls


HTTPX_CHILD = r"""
import json, sys
port, mode = int(sys.argv[1]), sys.argv[2]
import httpx, trio
import netstats
events = {"open", "connect", "close"} if mode == "kernel-counted" else None
with netstats.capture(lambda event, conn, nbytes: None, events=events) as cap:
    async def main():
        for _ in range(3):  # a client each: a connection each
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://localhost:{port}/bytes/1000")
                assert len(response.content) == 1000
    trio.run(main)
print(json.dumps([{"host": c.host, "rx": c.rx, "tx": c.tx, "error": c.error} for c in cap.connections]))
"""


@pytest.mark.parametrize("mode", MODES)
def test_httpx_on_trio_makes_one_record_per_connection(peer: Any, mode: str) -> None:
    """trio first asks getaddrinfo for the name as a numeric address (AI_NUMERICHOST), which
    fails for a name by design: that probe is no connection attempt (it made a failed record,
    gaierror, each time: six records for three connections)."""
    pytest.importorskip("httpx")
    http = peer("http")
    out = subprocess.run(
        [sys.executable, "-c", HTTPX_CHILD, str(http.port), mode],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout.splitlines()[-1])
    served = http.wait_closed(3)
    refused = [r for r in records if r["error"] == "ConnectionRefusedError"]  # (::1 first, if it resolves so)
    made = [r for r in records if r["error"] is None]
    assert len(records) == len(made) + len(refused)
    assert [(r["rx"], r["tx"]) for r in made] == [(s["tx"], s["rx"]) for s in served]
    assert all(r["host"] == "localhost" for r in made)
