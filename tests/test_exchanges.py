"""Request/response exchanges (`Connection.exchanges`, `capture(exchanges=True)`): one per
request on a keep-alive connection, the number of requests known to the test; bytes still the
peer's own count; `netstats run` records them for a timeline and saves them in its JSON."""

from __future__ import annotations

import http.client
import json
import smtplib
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import netstats
from netstats import _exchanges

REQUESTS = 4


def in_order(exchanges: list[list[float | None]]) -> bool:
    """Each exchange answered after it was sent, and the next sent after that answer ended."""
    times = [t for e in exchanges for t in e]
    return all(t is not None for t in times) and times == sorted(times)


def keep_alive(port: int, host: str = "127.0.0.1", n: int = REQUESTS) -> None:
    client = http.client.HTTPConnection(host, port, timeout=10)
    for i in range(n):
        client.request("GET", f"/bytes/{1000 * (i + 1)}")
        assert len(client.getresponse().read()) == 1000 * (i + 1)
    client.close()


def test_each_request_on_a_keep_alive_connection_is_an_exchange(peer):
    http_peer = peer("http")
    with netstats.capture(exchanges=True) as cap:
        keep_alive(http_peer.port)
    (conn,) = cap.connections
    (seen,) = http_peer.wait_closed(1)
    assert (conn.tx, conn.rx) == (seen["rx"], seen["tx"])  # the bytes are the peer's count still
    assert conn.exchanges is not None and len(conn.exchanges) == REQUESTS
    assert in_order(conn.exchanges)
    assert conn.opened <= conn.exchanges[0][0] and conn.exchanges[-1][2] <= conn.closed
    assert conn.as_dict()["exchanges"] == conn.exchanges


def test_past_the_most_kept_no_later_turn_stretches_the_last_one_kept(peer, monkeypatch):
    """With room for 2, a connection of 4 requests keeps the first 2 as they were: the answers
    to the 3rd and 4th end after the 2nd's last byte, and must not move it."""
    monkeypatch.setattr(_exchanges, "MOST", 2)
    http_peer = peer("http")
    with netstats.capture(exchanges=True) as cap:
        client = http.client.HTTPConnection("127.0.0.1", http_peer.port, timeout=10)
        for i in range(REQUESTS):
            client.request("GET", f"/bytes/{100 * (i + 1)}")
            client.getresponse().read()
            if i == 1:
                kept = [list(e) for e in cap.connections[0].exchanges or []]
        client.close()
    (conn,) = cap.connections
    assert len(kept) == 2 and conn.exchanges == kept


def test_without_asking_no_exchanges_are_recorded(peer):
    http_peer = peer("http")
    with netstats.capture() as cap:
        keep_alive(http_peer.port, n=2)
    (conn,) = cap.connections
    assert conn.exchanges is None and conn.as_dict()["exchanges"] is None


def test_a_servers_greeting_begins_no_exchange_each_command_does(peer):
    """SMTP: the server speaks first; the client's commands (EHLO, MAIL, RCPT, DATA, the
    message, QUIT: six asks, each answered) are the exchanges."""
    smtp = peer("smtp")
    with netstats.capture(exchanges=True) as cap:
        with smtplib.SMTP("127.0.0.1", smtp.port, timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.com"], "Subject: hi\r\n\r\nhello\r\n")
    (conn,) = cap.connections
    assert conn.exchanges is not None and len(conn.exchanges) == 6
    assert in_order(conn.exchanges)


def test_an_accepted_connection_is_asked_by_reading_and_answers_by_writing():
    """The server's side of three request/response turns: three exchanges, read then written."""
    turns = 3
    with netstats.capture(servers=True, exchanges=True) as cap:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                for _ in range(turns):
                    conn.sendall(b"r" * len(conn.recv(100)))

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(("127.0.0.1", port)) as client:
            for i in range(turns):
                client.sendall(b"q" * (i + 10))
                assert len(client.recv(100)) == i + 10
        thread.join(10)
        listener.close()
    by_side = {c.side: c for c in cap.connections}
    for side in ("client", "server"):
        exchanges = by_side[side].exchanges
        assert exchanges is not None and len(exchanges) == turns, side
        assert in_order(exchanges), side


def test_a_callback_still_hears_every_read_and_write_while_exchanges_are_recorded(peer):
    http_peer = peer("http")
    heard = {"read": 0, "write": 0}

    def callback(event: str, conn: netstats.Connection, nbytes: int | None) -> None:
        if event in heard and nbytes is not None:
            heard[event] += nbytes

    with netstats.capture(callback, exchanges=True) as cap:
        keep_alive(http_peer.port, n=2)
    (conn,) = cap.connections
    (seen,) = http_peer.wait_closed(1)
    assert (heard["write"], heard["read"]) == (conn.tx, conn.rx) == (seen["rx"], seen["tx"])
    assert conn.exchanges is not None and len(conn.exchanges) == 2


PROGRAM = """\
import http.client, os, sys

def requests(n):
    client = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
    for i in range(n):
        client.request("GET", "/bytes/100")
        client.getresponse().read()
    client.close()

requests(3)
if os.fork() == 0:
    requests(2)
    os._exit(0)
os.wait()
"""


def netstats_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netstats", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_netstats_run_saves_exchanges_for_a_timeline_of_every_process(tmp_path: Path, peer):
    http_peer = peer("http")
    (tmp_path / "keepalive.py").write_text(textwrap.dedent(PROGRAM))
    done = netstats_cli(
        "run", "--format", "json", "-o", "run.json", "keepalive.py", str(http_peer.port), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    conns = json.loads((tmp_path / "run.json").read_text())["connections"]
    assert sorted(len(c["exchanges"]) for c in conns) == [2, 3]  # the child's 2, the parent's 3
    assert all(in_order(c["exchanges"]) for c in conns)
    again = netstats_cli("report", "run.json", "--format", "trace", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    "exchanges",
    [[[1.5, 1.2]], [["a", None, None]], [[1.5, 1.6, 99.0]], "[]", [[1.5, 1.6, float("nan")]]],
    ids=["two-times", "text", "after-closed", "not-a-list", "nan"],
)
def test_a_saved_run_with_malformed_exchanges_is_refused_in_one_line(tmp_path: Path, exchanges: Any):
    conn = {"id": 1, "pid": 10, "transport": "tcp", "opened": 1.0, "closed": 2.0, "exchanges": exchanges}
    doc = {"schema": "netstats.run/1", "program": ["app.py"], "pid": 10, "started": 1.0, "finished": 3.0}
    (tmp_path / "run.json").write_text(json.dumps({**doc, "exit_code": 0, "connections": [conn]}))
    done = netstats_cli("report", "run.json", "--html", "page.html", cwd=tmp_path)
    assert done.returncode == 2 and "'exchanges'" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "page.html").exists()
