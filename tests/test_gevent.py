"""gevent after `monkey.patch_all()`, run before or after netstats was imported, or gevent's
modules first imported during a capture (used directly, without patch_all(): gevent wants
patch_all() before any thread starts, and a capture's census is a thread).

capture() must not raise nor take gevent's cooperative sockets away: gevent's socket class
stays in place and its C sockets count (source "python", application bytes exact — the
plaintext for gevent's TLS —, client and accepted server connections, in both counting modes).
Each case runs
in its own interpreter (monkey patching is for the whole process); every expected figure is
the peer's own count or a payload size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from helpers import MODES

pytest.importorskip("gevent")

N = 50_000
TIMEOUT = 60

CHILD = r"""
import json, sys
order, mode, kind, port, N, ca_file, cert_file = sys.argv[1:8]
port, N = int(port), int(N)
if order == "before":
    from gevent import monkey; monkey.patch_all()
import netstats
if order == "after":
    from gevent import monkey; monkey.patch_all()
import socket, ssl, time
if order != "during":
    import gevent, gevent.server

def talk(sock, hold=0.0):
    gevent.sleep(hold)  # (TLS: open long enough for the census to find it: README, 0.5 s)
    sock.sendall(b"x" * N)
    got = 0
    while got < N:
        chunk = sock.recv(65536)
        assert chunk
        got += len(chunk)
    sock.close()
    return got

def client():
    sock = socket.create_connection(("127.0.0.1", port))
    if kind == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca_file)
        sock = context.wrap_socket(sock, server_hostname="localhost")
        return talk(sock, 0.6)  # (the census would find it, were it not counted: README, 0.5 s)
    return talk(sock)

def handle(sock, address):  # the server: echo N bytes back
    got = 0
    while got < N:
        chunk = sock.recv(65536)
        assert chunk
        got += len(chunk)
        sock.sendall(chunk)
    sock.close()

events = {"open", "connect", "close"} if mode == "kernel-counted" else None
with netstats.capture(lambda *args: None, events=events, servers=True) as cap:
    if order == "during":  # gevent's modules first imported now, used without patch_all()
        import gevent, gevent.server
        from gevent import socket, ssl
    assert "gevent" in type(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).__module__
    if kind == "server":
        server = gevent.server.StreamServer(("127.0.0.1", 0), handle)
        server.start()
        port = server.server_port
    # Two greenlets at once: cooperative sockets take turns, nothing blocks the hub.
    jobs = [gevent.spawn(client) for _ in range(2)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert [job.value for job in jobs] == [N, N]
    deadline = time.monotonic() + 10
    expected = 4 if kind == "server" else 2
    while time.monotonic() < deadline and not (
        len([c for c in cap.connections if c.closed]) >= expected
    ):
        gevent.sleep(0.05)
    if kind == "server":
        server.stop()
assert "gevent" in socket.socket.__module__  # gevent's patches stay, whenever they came
if kind != "server":
    assert client() == N  # and after the capture
print(json.dumps([
    {"side": c.side, "source": c.source, "rx": c.rx, "tx": c.tx, "wire_rx": c.wire_rx,
     "wire_tx": c.wire_tx, "tls": c.tls, "closed": c.closed is not None, "error": c.error}
    for c in cap.connections
]))
"""


def run_child(order: str, mode: str, kind: str, port: int, ca_file: str, cert_file: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, order, mode, kind, str(port), str(N), ca_file, cert_file],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    assert "internal error" not in out.stderr, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ["before", "after", "during"])
def test_client_counts_application_bytes_exactly(
    peer: Any, ca_file: str, cert_file: str, order: str, mode: str
) -> None:
    echo = peer("echo")
    records = run_child(order, mode, "plain", echo.port, ca_file, cert_file)
    peer_records = echo.wait_closed(3)  # the two under the capture, then the one after it
    assert len(records) == 2, records
    for record in records:
        assert record["source"] == "python" and record["closed"] and record["side"] == "client"
    ours = sorted((r["rx"], r["tx"]) for r in records)
    assert ours == sorted((p["tx"], p["rx"]) for p in peer_records[:2]) == [(N, N), (N, N)]
    assert peer_records[2]["rx"] == N


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ["before", "after", "during"])
def test_server_counts_accepted_connections_exactly(
    ca_file: str, cert_file: str, order: str, mode: str
) -> None:
    # The clients are gevent's too, in the same process: each side's figures are the payload size.
    records = run_child(order, mode, "server", 0, ca_file, cert_file)
    sides = sorted(r["side"] for r in records)
    assert sides == ["client", "client", "server", "server"], records
    for record in records:
        assert record["source"] == "python" and record["closed"]
        assert (record["rx"], record["tx"]) == (N, N)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", ["before", "after", "during"])
def test_tls_client_counts_the_plaintext_exactly(
    peer: Any, ca_file: str, cert_file: str, order: str, mode: str
) -> None:
    echo = peer("echo", tls=True)
    records = run_child(order, mode, "tls", echo.port, ca_file, cert_file)
    peer_records = echo.wait_closed(3)
    assert len(records) == 2, records  # one each, not another from the census
    for record in records:
        assert record["source"] == "python" and record["closed"] and record["tls"], records
        assert record["wire_tx"] > N and record["wire_rx"] > N  # the ciphertext, on Linux
    ours = sorted((r["rx"], r["tx"]) for r in records)
    assert ours == sorted((p["tx"], p["rx"]) for p in peer_records[:2]) == [(N, N), (N, N)]
