"""gevent after `monkey.patch_all()`, run before or after netstats was imported.

capture() must not raise nor take gevent's cooperative sockets away: gevent's socket class
stays in place, and its TCP connections are recorded by the kernel census (source "kernel":
wire bytes exact, application bytes None — never 0). Each case runs in its own interpreter
(monkey patching is for the whole process); every expected figure is the peer's own count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("gevent")

N = 50_000
TIMEOUT = 60

CHILD = r"""
import json, sys
order, port, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if order == "before":
    from gevent import monkey; monkey.patch_all()
import netstats
if order == "after":
    from gevent import monkey; monkey.patch_all()
import socket, time
import gevent

def exchange():
    sock = socket.create_connection(("127.0.0.1", port))
    gevent.sleep(1.0)  # open long enough for the census to find it (README: at least 0.5 s)
    sock.sendall(b"x" * N)
    got = 0
    while got < N:
        chunk = sock.recv(65536)
        assert chunk
        got += len(chunk)
    sock.close()
    return got

with netstats.capture() as cap:
    # Two greenlets at once: cooperative sockets take turns, nothing blocks the hub.
    jobs = [gevent.spawn(exchange) for _ in range(2)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert "gevent" in type(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).__module__
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
        len(cap.connections) == 2 and all(c.closed for c in cap.connections)
    ):
        gevent.sleep(0.05)
assert exchange() == N  # and after the capture
print(json.dumps([
    {"source": c.source, "rx": c.rx, "tx": c.tx, "wire_rx": c.wire_rx, "wire_tx": c.wire_tx,
     "closed": c.closed is not None}
    for c in cap.connections
]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel census is Linux's")
@pytest.mark.parametrize("order", ["before", "after"])
def test_patch_all_connections_recorded_by_the_census_never_broken(peer: Any, order: str) -> None:
    echo = peer("echo")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, order, str(echo.port), str(N)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    assert "internal error" not in out.stderr, out.stderr
    records = json.loads(out.stdout.splitlines()[-1])
    peer_records = echo.wait_closed(3)[:2]  # the two under the capture, then the one after
    assert len(records) == 2, records
    for record in records:
        assert record["source"] == "kernel" and record["closed"]
        assert (record["rx"], record["tx"]) == (None, None)  # unknown, never 0
    assert sorted(r["wire_tx"] for r in records) == sorted(p["rx"] for p in peer_records) == [N, N]
    assert sorted(r["wire_rx"] for r in records) == sorted(p["tx"] for p in peer_records) == [N, N]
