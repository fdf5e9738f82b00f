"""Phases per connection (dns_time, connect_time, tls_time, tls_resumed, ttfb), each checked
against a clock netstats does not own: a server that waits a known time, the caller's own timing."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from helpers import MODES, capture_in, drain

import netstats
from netstats._report import Run, render_json, render_text

THINK = 0.3  # the server's wait before it answers
MARGIN = 2.0  # generous: the machine is shared


class SlowServer:
    """A loopback server (made before any capture: netstats does not see it) that reads one line,
    waits `think` seconds, then answers with `reply` and closes."""

    def __init__(self, think: float, reply: bytes, context: ssl.SSLContext | None = None):
        self.think, self.reply, self.context = think, reply, context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        with conn:
            conn.settimeout(20)
            try:
                if self.context is not None:
                    conn = self.context.wrap_socket(conn, server_side=True)
                buf = b""
                while b"\n" not in buf:
                    chunk = conn.recv(1024)
                    if not chunk:
                        return
                    buf += chunk
                time.sleep(self.think)
                conn.sendall(self.reply)
                if self.context is not None:
                    conn.unwrap()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def slow() -> Iterator[SlowServer]:
    server = SlowServer(THINK, b"answer\n")
    yield server
    server.close()


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # a session to resume is known at once
    return context


@pytest.mark.parametrize("mode", MODES)
def test_ttfb_is_the_servers_wait_plus_a_round_trip(slow: SlowServer, mode: str) -> None:
    with capture_in(mode) as cap:
        with socket.create_connection(("127.0.0.1", slow.port), timeout=20) as sock:
            time.sleep(0.2)  # idle before the first write: not part of ttfb
            sock.sendall(b"question\n")
            sent = time.monotonic()
            drain(sock, len(b"answer\n"))
            waited = time.monotonic() - sent
    (conn,) = cap.connections
    assert conn.ttfb is not None
    assert conn.ttfb + 0.011 >= THINK  # (the kernel's clock ticks in milliseconds)
    assert conn.ttfb <= waited + 0.011
    assert conn.ttfb < THINK + MARGIN
    assert netstats.stats(conn)["ttfb"] == conn.ttfb
    assert conn.as_dict()["ttfb"] == conn.ttfb


@pytest.mark.parametrize("mode", MODES)
def test_ttfb_is_none_when_nothing_came_back(mode: str) -> None:
    server = SlowServer(0.0, b"")
    try:
        with capture_in(mode) as cap:
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
                sock.sendall(b"question\n")
                assert sock.recv(10) == b""  # the server closes without a byte
    finally:
        server.close()
    (conn,) = cap.connections
    assert conn.ttfb is None


@pytest.mark.parametrize("mode", MODES)
def test_a_literal_address_has_no_dns_time_and_a_name_has_its_lookup(slow: SlowServer, mode: str) -> None:
    with capture_in(mode) as cap:
        with socket.create_connection(("127.0.0.1", slow.port), timeout=20):
            pass
        before = time.monotonic()
        with socket.create_connection(("localhost", slow.port), timeout=20):
            pass
        took = time.monotonic() - before
    literal, *named = cap.connections
    assert literal.dns_time is None
    named = [c for c in named if c.error is None]
    assert named and named[0].host == "localhost"
    assert named[0].dns_time is not None and 0 <= named[0].dns_time <= took


@pytest.mark.parametrize("mode", MODES)
def test_connect_time_is_within_the_callers_connect(slow: SlowServer, mode: str) -> None:
    with capture_in(mode) as cap:
        sock = socket.socket()
        sock.settimeout(20)
        before = time.monotonic()
        sock.connect(("127.0.0.1", slow.port))
        took = time.monotonic() - before
        sock.close()
    (conn,) = cap.connections
    assert conn.connect_time is not None and 0 <= conn.connect_time <= took
    assert conn.tls_time is None and conn.tls_resumed is None


def test_a_udp_connection_has_no_phases() -> None:
    with netstats.capture() as cap:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", 9))
            sock.send(b"x")
    (conn,) = cap.connections
    assert (conn.dns_time, conn.connect_time, conn.tls_time, conn.ttfb) == (None, None, None, None)


@pytest.mark.parametrize("mode", MODES)
def test_tls_time_is_within_the_handshake_and_a_second_session_is_resumed(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, mode: str
) -> None:
    server = SlowServer(THINK, b"answer\n", server_context)
    try:
        with capture_in(mode) as cap:
            session = None
            spans = []
            for _ in range(2):
                raw = socket.create_connection(("127.0.0.1", server.port), timeout=20)
                before = time.monotonic()
                tls = client_context.wrap_socket(raw, server_hostname="localhost", session=session)
                spans.append(time.monotonic() - before)
                tls.sendall(b"question\n")
                drain(tls, len(b"answer\n"))
                session = tls.session
                tls.close()
    finally:
        server.close()
    first, second = cap.connections
    for conn, span in zip((first, second), spans, strict=True):
        assert conn.tls_time is not None and 0 < conn.tls_time <= span
        assert conn.ttfb is not None and THINK <= conn.ttfb < THINK + MARGIN
    assert first.tls_resumed is False
    assert second.tls_resumed is True


def test_phases_are_in_the_json_and_text_reports(slow: SlowServer) -> None:

    with netstats.capture() as cap:
        with socket.create_connection(("localhost", slow.port), timeout=20) as sock:
            sock.sendall(b"question\n")
            drain(sock, len(b"answer\n"))
    conns = [c.as_dict() for c in cap.connections if c.error is None]
    saved = json.dumps(Run(["x"], 1, 0.0, 1.0, 0, conns).to_json())
    run = Run.from_json(json.loads(saved))
    data = json.loads(render_json(run))
    (conn,) = data["connections"]
    assert conn["ttfb"] >= THINK - 0.011 and conn["tls_time"] is None
    text = render_text(run, wide=True)
    assert "TTFB" in text


def test_a_plain_client_that_ends_at_its_first_read_is_counted_by_its_wrappers(slow: SlowServer) -> None:
    """The wait for ttfb's first read runs the wrappers; a connection that ends there (one
    request, one response) stays with them (the kernel takes over at the call after it:
    test_kernel.py)."""
    with capture_in("kernel-counted") as cap:
        with socket.create_connection(("127.0.0.1", slow.port), timeout=20) as sock:
            sock.sendall(b"question\n")
            drain(sock, len(b"answer\n"))  # (one segment of 7 bytes: one read)
            assert netstats.stats(sock, "reads") == 1
            assert netstats.stats(sock, "rx") == len(b"answer\n")
    (conn,) = cap.connections
    assert (conn.reads, conn.writes, conn.rx, conn.tx) == (1, 1, len(b"answer\n"), len(b"question\n"))
    assert conn.ttfb is not None and conn.ttfb >= THINK - 0.011
