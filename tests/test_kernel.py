"""Wire bytes and TCP health from the kernel: equal to what the other end of the stream counted."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import sys
import threading
import time

import pytest
from helpers import drain

import netstats

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO figures are Linux-only")
WIRE = ("wire_rx", "wire_tx", "rtt", "min_rtt", "retransmits", "retrans_bytes")


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def listening():
    """A stock listener made before any capture: the test's own independent peer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def read_all(sock) -> int:
    total = 0
    while chunk := sock.recv(65536):
        total += len(chunk)
    return total


def test_the_kernel_counts_a_plain_client_from_the_call_after_its_first_read(peer):
    echo = peer("echo")
    with netstats.capture() as cap:
        with socket.create_connection(echo.address) as s:
            s.sendall(b"a" * 100)
            assert s.recv(100, socket.MSG_WAITALL) == b"a" * 100  # one read, however it arrives
            assert netstats.stats(s, "reads") == 1  # still the wrappers
            s.sendall(b"b" * 50)  # the call after it: the kernel from here
            assert netstats.stats(s, "reads") is None
            drain(s, 50)
            assert (netstats.stats(s, "tx"), netstats.stats(s, "rx")) == (150, 150)
    (conn,) = cap.connections
    assert echo.totals(1) == (150, 150) == (conn.tx, conn.rx) == (conn.wire_tx, conn.wire_rx)
    assert conn.reads is None and conn.ttfb is not None


@pytest.mark.parametrize("events", [None, {"read", "write"}], ids=["kernel-counted", "wrapped"])
def test_plain_tcp_wire_bytes_equal_the_peers_count_and_rx_tx(peer, events):
    echo = peer("echo")
    callback = (lambda e, c, n: None) if events else None
    with netstats.capture(callback, events=events) as cap:
        with socket.create_connection(echo.address) as s:
            s.sendall(b"w" * 300_000)
            drain(s, 300_000)
            live = netstats.stats(s)
            assert (live["wire_tx"], live["wire_rx"]) == (300_000, 300_000)
            assert live["rtt"] > 0 and live["min_rtt"] > 0 and live["retransmits"] >= 0
    (conn,) = cap.connections
    rx, tx = echo.totals(1)
    assert (conn.wire_tx, conn.wire_rx) == (rx, tx) == (conn.tx, conn.rx) == (300_000, 300_000)
    assert (conn.reads is None) == (events is None)  # the kernel counts bytes, not calls


def test_live_stats_show_bytes_arrived_but_unread(peer):
    echo = peer("echo")
    with netstats.capture(), socket.create_connection(echo.address) as s:
        s.sendall(b"a" * 5000)
        wait_for(lambda: netstats.stats(s, "wire_rx") == 5000)
        assert netstats.stats(s, "rx") == 0  # arrived in the kernel, not read by the application
        assert echo.counts()[0]["tx"] == 5000
        drain(s, 5000)
        assert netstats.stats(s, "rx") == 5000


@pytest.mark.parametrize("events", [None, {"write"}], ids=["kernel-counted", "wrapped"])
def test_sendall_that_timed_out_half_way(events):
    listener = listening()
    callback = (lambda e, c, n: None) if events else None
    with netstats.capture(callback, events=events) as cap:
        s = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.sendall(b"t" * 64 * 1024 * 1024)  # the peer reads nothing yet: the buffers fill up
        s.close()
    peer_received = read_all(accepted)
    accepted.close()
    listener.close()
    (conn,) = cap.connections
    assert 0 < conn.wire_tx == peer_received < 64 * 1024 * 1024
    if events is None:
        assert conn.tx == peer_received  # kernel-counted: the application bytes are exact too


def test_socket_dropped_without_close_keeps_its_final_wire_figures(peer):
    echo = peer("echo")
    seen = {}

    def on_close(event, conn, nbytes):
        seen.update({name: getattr(conn, name) for name in ("wire_tx", "wire_rx", "tx", "rx")})

    with netstats.capture(on_close, events={"close"}) as cap:
        s = socket.create_connection(echo.address)
        s.sendall(b"d" * 12345)
        drain(s, 12345)
        with pytest.warns(ResourceWarning):
            del s
            gc.collect()
    (conn,) = cap.connections
    rx, tx = echo.totals(1)
    assert seen == {"wire_tx": rx, "wire_rx": tx, "tx": rx, "rx": tx} == {k: 12345 for k in seen}
    assert (conn.wire_tx, conn.wire_rx) == (rx, tx)  # frozen at close


def test_sync_tls_wire_bytes_are_the_ciphertext_the_relay_counted(peer, client_context):
    echo = peer("echo", tls=True)
    relay = peer("relay", backend=echo.address)  # no certificate: it counts the ciphertext
    with netstats.capture() as cap:
        raw = socket.create_connection(relay.address)
        with client_context.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"p" * 40_000)
            drain(s, 40_000)
            # live: once the relay's figures are what the kernel reports, they stay so until close
            wait_for(lambda: relay.counts()[0]["tx"] == netstats.stats(s, "wire_rx"))
            relay_tx = relay.counts()[0]["tx"]
            assert netstats.stats(s, "wire_tx") == relay.counts()[0]["rx"]
    (conn,) = cap.connections
    relay_rx, _ = relay.totals(1)  # (the server's TLS alert after our close never reaches us)
    echo_rx, echo_tx = echo.totals(1)
    assert (conn.tx, conn.rx) == (echo_rx, echo_tx) == (40_000, 40_000)
    assert (conn.wire_tx, conn.wire_rx) == (relay_rx, relay_tx)
    assert conn.wire_tx > conn.tx and conn.wire_rx > conn.rx  # records, handshake: the overhead


def test_asyncio_tls_wire_bytes_are_the_ciphertext_the_relay_counted(peer, client_context):
    echo = peer("echo", tls=True)
    relay = peer("relay", backend=echo.address)

    async def main() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", relay.port, ssl=client_context, server_hostname="localhost"
        )
        writer.write(b"q" * 30_000)
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(30_000), 5)
        writer.close()
        await writer.wait_closed()

    with netstats.capture() as cap:
        asyncio.run(main())
    (conn,) = cap.connections
    relay_rx, relay_tx = relay.totals(1)
    assert (conn.tx, conn.rx) == echo.totals(1) == (30_000, 30_000)
    assert (conn.wire_tx, conn.wire_rx) == (relay_rx, relay_tx)
    assert conn.tls == "TLSv1.3"


def test_udp_and_unix_have_no_kernel_figures(peer, tmp_path):
    udp = peer("udp")
    path = str(tmp_path / "e.sock")
    peer("echo", unix=path)
    with netstats.capture() as cap:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"x" * 10, udp.address)
            u.recvfrom(100)
        with socket.socket(socket.AF_UNIX) as x:
            x.connect(path)
            x.sendall(b"y" * 10)
            drain(x, 10)
    for conn in cap.connections:
        assert all(getattr(conn, name) is None for name in WIRE)
        assert all(conn.as_dict()[name] is None for name in WIRE)
        assert (conn.tx, conn.rx) == (10, 10)


def test_kernel_counted_connections_count_live_across_threads(peer):
    echo = peer("echo")
    with netstats.capture() as cap:
        s = socket.create_connection(echo.address)
        s.sendall(b"z" * 1000)
        drain(s, 1000)
        t = threading.Thread(target=lambda: (s.sendall(b"z" * 2000), drain(s, 2000)))
        t.start()
        t.join(5)
        assert (cap.tx, cap.rx) == (3000, 3000)  # totals read live from the kernel
        assert netstats.mark(s) == pytest.approx({"tx": 3000, "rx": 3000, "elapsed": 0}, abs=5)
        s.close()
    assert echo.totals(1) == (3000, 3000) == (cap.tx, cap.rx)


class SilentTLSServer:
    """A TLS server (in a thread, stock sockets made before any capture) that completes the
    handshake, sends nothing, and reads nothing until released: the client's sendall stalls."""

    def __init__(self, cert_file: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file)
        self.context.num_tickets = 0  # nothing unread at the client: its close sends FIN, not RST
        self.listener = listening()
        self.address = self.listener.getsockname()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        raw, _ = self.listener.accept()
        with self.context.wrap_socket(raw, server_side=True) as s:
            self.release.wait(10)
            try:
                while s.recv(65536):
                    pass
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)
        self.listener.close()


def test_sync_tls_sendall_that_timed_out_half_way(peer, cert_file, client_context):
    server = SilentTLSServer(cert_file)
    relay = peer("relay", backend=server.address)  # counts the ciphertext that passes
    try:
        with netstats.capture() as cap:
            raw = socket.create_connection(relay.address)
            s = client_context.wrap_socket(raw, server_hostname="localhost")
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.sendall(b"t" * 64 * 1024 * 1024)
            wait_for(lambda: relay.counts()[0]["tx"] == netstats.stats(s, "wire_rx"))
            relay_tx = relay.counts()[0]["tx"]  # the handshake: the server has sent nothing since
            s.close()
    finally:
        server.close()
    (conn,) = cap.connections
    relay_rx, _ = relay.totals(1)  # once released, the server reads all the kernel had accepted
    assert 0 < conn.wire_tx == relay_rx
    assert conn.wire_rx == relay_tx


def test_sync_tls_socket_dropped_without_close_keeps_its_wire_figures(peer, client_context):
    echo = peer("echo", tls=True)
    relay = peer("relay", backend=echo.address)
    with netstats.capture() as cap:
        s = client_context.wrap_socket(socket.create_connection(relay.address), server_hostname="localhost")
        s.sendall(b"d" * 20_000)
        drain(s, 20_000)
        wait_for(lambda s=s: relay.counts()[0]["tx"] == netstats.stats(s, "wire_rx"))
        relay_tx = relay.counts()[0]["tx"]
        with pytest.warns(ResourceWarning):
            del s
            gc.collect()
    (conn,) = cap.connections
    relay_rx, _ = relay.totals(1)
    assert conn.closed is not None
    assert (conn.tx, conn.rx) == echo.totals(1) == (20_000, 20_000)
    assert (conn.wire_tx, conn.wire_rx) == (relay_rx, relay_tx)
