"""CLOSE-state endings with the descriptor still open: the client reads, shuts down, the peer
sends more, and the client's kernel answers with a reset (not a FIN). rx and wire_rx stay
exact, in both counting modes and over TLS, live and at close. The expected counts are the
peer's own: what it sent before it saw the client's FIN (what it sent after never arrived).
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from typing import Any

import pytest
from helpers import MODES, capture_in

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's TCP states")

LATE = 24  # bytes the peer sends after the client's FIN: the client's kernel resets
WAIT = 30.0
_TCP_CLOSE = 7


class ResettingPeer:
    """A loopback server thread: reads the client's request, sends `size` bytes, waits for the
    client's FIN, sends LATE bytes more, and records the reset that answers them. It counts
    every byte it moves on the wire (TLS: through a memory BIO, so the ciphertext too)."""

    def __init__(self, size: int, context: ssl.SSLContext | None = None) -> None:
        self.size, self.context = size, context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.wire = {"rx": 0, "tx": 0}  # the peer's wire bytes
        self.plain = {"rx": 0, "tx": 0}  # its application bytes
        self.sent_before_fin = -1  # wire bytes sent before it saw the client's FIN
        self.reset = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        raw, _ = self.listener.accept()
        raw.settimeout(WAIT)
        try:
            if self.context is None:
                self._plain(raw)
            else:
                self._tls(raw)
        finally:
            raw.close()

    def _send(self, raw: socket.socket, data: bytes) -> None:
        raw.sendall(data)
        self.wire["tx"] += len(data)

    def _recv(self, raw: socket.socket) -> bytes:
        data = raw.recv(65536)
        self.wire["rx"] += len(data)
        return data

    def _until_fin_then_late(self, raw: socket.socket, late: bytes) -> None:
        while self._recv(raw):
            pass
        self.sent_before_fin = self.wire["tx"]
        self._send(raw, late)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # the client's reset: this socket's own state, CLOSE
            if raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE:
                self.reset.set()
                return
            time.sleep(0.005)

    def _plain(self, raw: socket.socket) -> None:
        request = self._recv(raw)
        self.plain["rx"] += len(request)
        self._send(raw, b"a" * self.size)
        self.plain["tx"] += self.size
        self._until_fin_then_late(raw, b"b" * LATE)

    def _tls(self, raw: socket.socket) -> None:
        assert self.context is not None
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)

        def drive(step: Any, *args: Any) -> Any:
            while True:
                try:
                    result = step(*args)
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        self._send(raw, outgoing.read())
                    data = self._recv(raw)
                    assert data, "the client left during the exchange"
                    incoming.write(data)
                    continue
                if outgoing.pending:
                    self._send(raw, outgoing.read())
                return result

        drive(tls.do_handshake)
        self.plain["rx"] += len(drive(tls.read, 65536))
        drive(tls.write, b"a" * self.size)
        self.plain["tx"] += self.size
        tls.write(b"b" * LATE)
        self._until_fin_then_late(raw, outgoing.read())

    def close(self) -> None:
        self.thread.join(WAIT)
        self.listener.close()


def _read(sock: Any, size: int) -> None:
    got = 0
    while got < size:
        chunk = sock.recv(size - got)
        assert chunk, "the peer closed early"
        got += len(chunk)


@pytest.mark.parametrize("mode", MODES)
def test_reset_after_shutdown(mode: str) -> None:
    peer = ResettingPeer(1000)
    try:
        with capture_in(mode) as cap:
            sock = socket.create_connection(peer.address)
            sock.sendall(b"GET\n")
            _read(sock, 1000)
            sock.shutdown(socket.SHUT_RDWR)
            assert peer.reset.wait(WAIT), "the peer saw no reset"
            (conn,) = cap.connections
            assert (conn.rx, conn.wire_rx) == (1000, peer.sent_before_fin)  # live, after the reset
            sock.close()
        peer.close()
    finally:
        peer.listener.close()
    (conn,) = cap.connections
    assert (conn.tx, conn.wire_tx) == (peer.plain["rx"], peer.wire["rx"]) == (4, 4)
    assert (conn.rx, conn.wire_rx) == (peer.plain["tx"], peer.sent_before_fin) == (1000, 1000)
    assert peer.wire["tx"] == 1000 + LATE  # (the late bytes were sent, and never arrived)


@pytest.mark.parametrize("mode", MODES)
def test_reset_after_shutdown_over_tls(mode: str, ca: Any, client_context: ssl.SSLContext) -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_context)
    peer = ResettingPeer(1000, server_context)
    try:
        with capture_in(mode) as cap:
            raw = socket.create_connection(peer.address)
            sock = client_context.wrap_socket(raw, server_hostname="localhost")
            sock.sendall(b"GET\n")
            _read(sock, 1000)
            sock.shutdown(socket.SHUT_RDWR)
            assert peer.reset.wait(WAIT), "the peer saw no reset"
            (conn,) = cap.connections
            assert (conn.rx, conn.wire_rx) == (1000, peer.sent_before_fin)
            sock.close()
        peer.close()
    finally:
        peer.listener.close()
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == (peer.plain["rx"], peer.plain["tx"]) == (4, 1000)
    assert (conn.wire_tx, conn.wire_rx) == (peer.wire["rx"], peer.sent_before_fin)
    assert peer.wire["tx"] > peer.sent_before_fin  # (the late record was sent, and never arrived)
