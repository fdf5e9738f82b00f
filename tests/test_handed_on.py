"""Descriptors handed on: a socket object gives its descriptor up (detach()) to code that does
its I/O on the bare number, as multiprocessing.connection does. The connection is not over: the
kernel counts it on (through the census) until its last descriptor closes. Every expected count
is the peer's own (a multiprocessing Connection that counts what it reads and writes).
"""

from __future__ import annotations

import socket
import threading
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import pytest
from helpers import MODES, capture_in, drain

import netstats
from netstats._sources import census

pytestmark = pytest.mark.skipif(not census.supported, reason="the kernel counts on only on Linux")


class CountedConnection(Connection):
    """The peer's own count: every byte its Connection reads and writes on the descriptor."""

    rx = tx = 0

    def _send(self, buf: Any, write: Any = None) -> None:
        super()._send(buf)  # type: ignore[misc]
        self.tx += len(buf)

    def _recv(self, size: int, read: Any = None) -> Any:
        buf = super()._recv(size)  # type: ignore[misc]
        self.rx += buf.getbuffer().nbytes
        return buf


def _serve(listener: Listener, counted: list[CountedConnection], up: int) -> None:
    accepted = listener.accept()
    conn = CountedConnection(accepted._handle)  # the same descriptor, counted by the peer
    accepted._handle = None  # (now conn's to close)
    counted.append(conn)
    try:
        for _ in range(3):
            data = conn.recv_bytes()
            conn.send_bytes(b"y" * (2 * len(data)))
        assert conn.recv_bytes() == b"bye"
    finally:
        conn.close()


def _answer(client: Any) -> bytes:
    assert client.poll(30), "the peer did not answer"
    return client.recv_bytes()  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("servers", [False, True])
def test_multiprocessing_connection_counted_after_detach(mode: str, servers: bool) -> None:
    """Client() and Listener.accept() detach() the socket right away: 600 KB up, 1.2 MB back."""
    counted: list[CountedConnection] = []
    with capture_in(mode, servers=servers) as cap:
        with Listener(("127.0.0.1", 0)) as listener:
            address = listener.address
            server = threading.Thread(target=_serve, args=(listener, counted, 200_000))
            server.start()
            client = Client(listener.address)
            for _ in range(3):
                client.send_bytes(b"x" * 200_000)
                assert len(_answer(client)) == 400_000
            client.send_bytes(b"bye")
            server.join(30)
            assert not server.is_alive()
            client.close()
    peer = counted[0]
    conns = {c.side: c for c in cap.connections if c.transport == "tcp"}
    assert set(conns) == ({"client", "server"} if servers else {"client"})
    mine = conns["client"]
    assert mine.closed is not None and mine.error is None
    assert (mine.rx, mine.tx) == (peer.tx, peer.rx)
    assert (mine.wire_rx, mine.wire_tx) == (peer.tx, peer.rx)
    assert mine.host is None and mine.remote == address
    if servers:
        theirs = conns["server"]  # the peer's own side, counted by netstats too
        assert (theirs.rx, theirs.tx) == (peer.rx, peer.tx)
        assert theirs.closed is not None


@pytest.mark.parametrize("mode", MODES)
def test_detached_descriptor_open_at_stop_stays_live(mode: str) -> None:
    """A handed-on descriptor still open when the capture stops: like any connection open then,
    the record stays open and its figures are the kernel's, live (never 0)."""
    counted: list[CountedConnection] = []
    with Listener(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=_serve, args=(listener, counted, 1000))
        server.start()
        with capture_in(mode) as cap:
            client = Client(listener.address)
            for _ in range(3):
                client.send_bytes(b"x" * 1000)
                _answer(client)
        (conn,) = cap.connections
        assert conn.closed is None
        peer = counted[0]
        assert (conn.rx, conn.tx) == (peer.tx, peer.rx) == (3 * (4 + 2000), 3 * (4 + 1000))
        client.send_bytes(b"bye")
        server.join(30)
        client.close()


def test_detach_without_census_still_ends_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the census cannot follow (not running), detach() ends the record as before."""
    monkeypatch.setattr(census, "supported", False)
    counted: list[CountedConnection] = []
    with Listener(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=_serve, args=(listener, counted, 10))
        server.start()
        with netstats.capture() as cap:
            client = Client(listener.address)
            assert len(cap.connections) == 1 and cap.connections[0].closed is not None
        for _ in range(3):
            client.send_bytes(b"x" * 10)
            _answer(client)
        client.send_bytes(b"bye")
        server.join(30)
        client.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_connection_taken_back_after_detach_ends_once(mode: str) -> None:
    """detach(), then a socket object made for the descriptor takes the connection back; its
    close() with another thread running (close then asks the kernel whether a call still holds
    the socket) ends the connection once: one "close" event, the peer's own counts."""
    events: list[tuple[str, int | None]] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with capture_in(mode, events) as cap:
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            with server:
                client.sendall(b"x" * 100)
                assert drain(server, 100)
                client = socket.socket(fileno=client.detach())  # the same descriptor, carried on
                server.sendall(b"y" * 300)
                assert drain(client, 300)
                idle = threading.Event()
                other = threading.Thread(target=idle.wait, args=(30,))
                other.start()
                try:
                    client.close()
                finally:
                    idle.set()
                    other.join(30)
        (conn,) = cap.connections
        assert [event for event, _ in events].count("close") == 1, events
        assert (conn.tx, conn.rx) == (100, 300)
