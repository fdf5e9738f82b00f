"""Standard-library clients and every socket method: counts equal what the peer counted."""

from __future__ import annotations

import _socket
import array
import asyncio
import errno
import gc
import http.client
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import urllib.request
from multiprocessing.reduction import ForkingPickler

import pytest
from helpers import MODES, capture_in, drain, wait_for

import netstats


@pytest.mark.parametrize("mode", MODES)
def test_sendall_and_recv_match_the_echo_peers_count(peer, mode):
    echo = peer("echo")
    with capture_in(mode) as cap, socket.create_connection(echo.address) as s:
        s.sendall(b"x" * 100_000)
        drain(s, 100_000)
    rx, tx = echo.totals(1)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == (rx, tx) == (100_000, 100_000)
    assert (cap.tx, cap.rx) == (100_000, 100_000)


@pytest.mark.parametrize("mode", MODES)
def test_every_send_and_receive_method_is_counted_once(peer, tmp_path, mode):
    echo = peer("echo")
    payload = tmp_path / "file.bin"
    payload.write_bytes(b"f" * 70_000)
    sent = 0
    reads = 0  # calls that returned data, counted here

    def got_data(n: int) -> int:
        nonlocal reads
        reads += n > 0
        return n

    with capture_in(mode) as cap, socket.create_connection(echo.address) as s:
        sent += s.send(b"a" * 10)
        got = 0
        while got < 10:
            got += got_data(len(s.recv(10 - got)))
        s.sendall(memoryview(array.array("i", range(100))))  # 400 bytes, not 100 items
        sent += 400
        buf = bytearray(400)
        got = 0
        while got < 400:
            got += got_data(s.recv_into(memoryview(buf)[got:]))
        sent += s.sendmsg([b"b" * 7, b"c" * 8])
        got = 0
        while got < 15:
            got += got_data(len(s.recvfrom(15 - got)[0]))
        sent += s.send(b"d" * 5)
        got = 0
        while got < 5:
            got += got_data(s.recvfrom_into(bytearray(5 - got))[0])
        (conn,) = cap.connections
        writes_before_sendfile = conn.writes
        with open(payload, "rb") as f:
            sent += s.sendfile(f)
        sendfile_writes = conn.writes - writes_before_sendfile if conn.writes is not None else None
        got = 0
        while got < 70_000:
            got += got_data(len(s.recvmsg(70_000 - got)[0]))
        s.sendall(b"e" * 9)
        sent += 9
        got = 0
        while got < 9:
            got += got_data(s.recvmsg_into([bytearray(9 - got)])[0])
    rx, tx = echo.totals(1)
    assert sent == rx == 10 + 400 + 15 + 5 + 70_000 + 9
    assert (conn.tx, conn.rx) == (rx, tx)
    if mode == "wrapped":
        assert writes_before_sendfile == 4  # send, sendall, sendmsg, send
        assert sendfile_writes is not None and sendfile_writes >= 1
        assert (conn.reads, conn.writes) == (reads, 4 + sendfile_writes + 1)
    else:
        assert (conn.reads, conn.writes) == (None, None)  # the kernel counts bytes, not calls


@pytest.mark.parametrize("mode", MODES)
def test_makefile_reads_and_writes_are_counted(peer, mode):
    echo = peer("echo")
    with capture_in(mode) as cap, socket.create_connection(echo.address) as s:
        with s.makefile("rwb") as f:
            f.write(b"line one\n" * 1000)
            f.flush()
            for _ in range(1000):
                assert f.readline() == b"line one\n"
    rx, tx = echo.totals(1)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == (rx, tx) == (9000, 9000)


@pytest.mark.parametrize("mode", MODES)
def test_http_client_get_and_post(peer, mode):
    server = peer("http")
    with capture_in(mode) as cap:
        http_conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        http_conn.request("GET", "/bytes/12345")
        assert len(http_conn.getresponse().read()) == 12345
        http_conn.request("POST", "/upload", body=b"p" * 5000)
        assert http_conn.getresponse().read() == b"ok"
        http_conn.close()
    rx, tx = server.totals(1)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == (rx, tx)


def test_urllib_records_the_host_name_asked_for(peer):
    server = peer("http")
    with netstats.capture() as cap:
        urllib.request.urlopen(f"http://localhost:{server.port}/bytes/2000", timeout=5).read()
    good = [c for c in cap.connections if c.error is None]
    rx, tx = server.totals(1)
    assert len(good) == 1
    assert (good[0].tx, good[0].rx) == (rx, tx)
    assert good[0].host == "localhost"
    assert good[0].remote == ("127.0.0.1", server.port)
    # a refused attempt on ::1 first is a Connection too, with nothing counted
    for failed in cap.connections:
        if failed.error is not None:
            assert (failed.error, failed.rx, failed.tx) == ("ConnectionRefusedError", 0, 0)


def test_sync_tls_counts_the_plaintext(peer, client_context):
    echo = peer("echo", tls=True)
    with netstats.capture() as cap:
        raw = socket.create_connection(echo.address)
        with client_context.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"t" * 50_000)
            drain(s, 50_000)
            s.send(b"u" * 100)
            got = 0
            buf = bytearray(100)
            while got < 100:
                got += s.recv_into(memoryview(buf)[got:])
    rx, tx = echo.totals(1)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == (rx, tx) == (50_100, 50_100)
    assert conn.tls == "TLSv1.3"
    assert conn.host == "localhost"
    assert conn.closed is not None


def test_https_with_http_client(peer, client_context):
    server = peer("http", tls=True)
    with netstats.capture() as cap:
        https = http.client.HTTPSConnection("localhost", server.port, context=client_context, timeout=5)
        https.request("GET", "/bytes/30000")
        assert len(https.getresponse().read()) == 30000
        https.close()
    rx, tx = server.totals(1)
    (conn,) = [c for c in cap.connections if c.error is None]
    assert (conn.tx, conn.rx) == (rx, tx)
    assert conn.tls is not None and conn.tls.startswith("TLS")


def test_tls_handshake_failure_is_a_connection_with_the_error(peer):
    echo = peer("echo", tls=True)
    untrusting = ssl.create_default_context()  # does not trust the test CA
    with netstats.capture() as cap:
        raw = socket.create_connection(echo.address)
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting.wrap_socket(raw, server_hostname="localhost")
        raw.close()
    (conn,) = cap.connections
    assert conn.error == "SSLCertVerificationError"
    assert conn.closed is not None and (conn.rx, conn.tx) == (0, 0)


def test_udp_unconnected_and_connected(peer):
    udp = peer("udp")
    with netstats.capture() as cap:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for size in (1, 100, 1400):
                s.sendto(b"q" * size, udp.address)
                assert len(s.recvfrom(2048)[0]) == size
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.connect(udp.address)
            s.send(b"r" * 300)
            assert len(s.recv(2048)) == 300
    first, second = cap.connections
    assert first.transport == second.transport == "udp"
    assert (first.tx, first.rx) == (1501, 1501)
    assert (second.tx, second.rx) == (300, 300)
    assert (first.writes, first.reads, second.writes, second.reads) == (3, 3, 1, 1)
    assert second.remote == udp.address
    peer_rx, peer_tx = udp.counts()[0]["rx"], udp.counts()[0]["tx"]
    assert (peer_rx, peer_tx) == (first.tx + second.tx, first.rx + second.rx)


@pytest.mark.parametrize("mode", MODES)
def test_unix_stream_socket(peer, tmp_path, mode):
    path = str(tmp_path / "echo.sock")
    echo = peer("echo", unix=path)
    with capture_in(mode) as cap, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(b"z" * 3333)
        drain(s, 3333)
    rx, tx = echo.totals(1)
    (conn,) = cap.connections
    assert conn.transport == "unix"
    assert conn.remote == path
    assert (conn.tx, conn.rx) == (rx, tx) == (3333, 3333)


CLIENT = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"c" * 777)
got = 0
while got < 555:
    got += len(s.recv(555 - got))
s.close()
"""


@pytest.mark.parametrize("servers", [True, False])
def test_accepted_connections_only_with_servers(servers):
    with netstats.capture(servers=servers) as cap:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(listener.getsockname()[1])])
            accepted, _ = listener.accept()
            with accepted:
                got = 0
                while got < 777:
                    got += len(accepted.recv(4096))
                accepted.sendall(b"s" * 555)
                assert proc.wait(10) == 0
    if not servers:
        assert cap.connections == []
        return
    (conn,) = cap.connections
    assert conn.side == "server"
    assert (conn.rx, conn.tx) == (777, 555)


def test_refused_connect_raises_the_stock_error_and_is_recorded():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    events = []
    with netstats.capture(lambda e, c, n: events.append(e)) as cap:
        with pytest.raises(ConnectionRefusedError) as caught:
            socket.create_connection(("127.0.0.1", port), timeout=5)
    assert caught.value.errno == errno.ECONNREFUSED
    (conn,) = cap.connections
    assert conn.error == "ConnectionRefusedError"
    assert conn.closed is not None and conn.connected is None
    assert events == ["open", "close"]


@pytest.mark.parametrize("mode", MODES)
def test_timeouts_and_would_block_reach_the_caller_unchanged(peer, mode):
    echo = peer("echo")
    with capture_in(mode) as cap, socket.create_connection(echo.address) as s:
        s.settimeout(0.05)
        with pytest.raises(TimeoutError):
            s.recv(10)
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(10)
        s.setblocking(True)
        s.sendall(b"k" * 10)
        drain(s, 10)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == (10, 10)
    assert echo.totals(1) == (10, 10)


def test_a_socket_dropped_without_close_gets_one_close_event(peer):
    echo = peer("echo")
    events = []
    with netstats.capture(lambda e, c, n: events.append(e)) as cap:
        s = socket.create_connection(echo.address)
        s.sendall(b"g" * 64)
        drain(s, 64)
        with pytest.warns(ResourceWarning):
            del s
            gc.collect()
    (conn,) = cap.connections
    assert events.count("close") == 1 and events[-1] == "close"
    assert conn.closed is not None
    assert echo.totals(1) == (64, 64) == (conn.tx, conn.rx)


def test_sockets_stay_sockets_and_pickle_for_multiprocessing(peer):
    echo = peer("echo")
    old = socket.socket()
    with netstats.capture():
        new = socket.create_connection(echo.address)
        assert isinstance(new, socket.socket) and isinstance(old, socket.socket)
        assert issubclass(type(new), socket.socket)
        assert f"fd={new.fileno()}" in repr(new)
        clone = ForkingPickler.loads(ForkingPickler.dumps(new))
        assert clone.getpeername() == new.getpeername()
        clone.close()
        new.close()
    old.close()


def test_release_restores_stock_objects_and_open_connections_keep_counting(peer):
    echo = peer("echo")
    stock = (socket.socket, socket.getaddrinfo, ssl.SSLContext.sslsocket_class, os.sendfile)
    cap = netstats.capture()
    s = socket.create_connection(echo.address)
    s.sendall(b"a" * 10)
    drain(s, 10)
    (conn,) = netstats.release()
    assert (socket.socket, socket.getaddrinfo, ssl.SSLContext.sslsocket_class, os.sendfile) == stock
    s.sendall(b"b" * 20)
    drain(s, 20)
    assert (conn.tx, conn.rx) == (30, 30)
    assert (cap.tx, cap.rx) == (10, 10)  # the capture's totals stop with it
    s.close()
    assert type(socket.socket()) is socket.socket


def test_sockets_made_before_a_capture_are_not_seen_unless_registered(peer):
    echo = peer("echo")
    early = socket.create_connection(echo.address)
    with netstats.capture() as cap:
        early.sendall(b"1" * 5)
        drain(early, 5)
        assert cap.connections == []
        conn = netstats.register(early)
        early.sendall(b"2" * 7)
        drain(early, 7)
        early.close()
    assert cap.connections == [conn]
    assert (conn.tx, conn.rx) == (7, 7)
    assert echo.totals(1) == (12, 12)


@pytest.mark.parametrize("mode", MODES)
def test_smtplib_sendmail(peer, mode):
    server = peer("smtp")
    message = "Subject: hi\r\n\r\n" + "body line\r\n" * 100
    with capture_in(mode) as cap:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], message)
    rx, tx = server.totals(1)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == (rx, tx)
    assert conn.tx > len(message)


@pytest.mark.parametrize("events", [None, {"write"}], ids=["kernel-counted", "wrapped"])
def test_asyncio_sock_sendfile_is_counted(peer, tmp_path, events):
    echo = peer("echo")
    path = tmp_path / "payload.bin"
    path.write_bytes(b"s" * 200_000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, echo.address)
        await loop.sock_sendall(s, b"0")  # the first write settles how the connection is counted
        with open(path, "rb") as f:
            assert await loop.sock_sendfile(s, f) == 200_000
        got = 0
        while got < 200_001:
            got += len(await asyncio.wait_for(loop.sock_recv(s, 65536), 5))
        s.close()

    with netstats.capture((lambda e, c, n: None) if events else None, events=events) as cap:
        asyncio.run(main())
    (conn,) = cap.connections
    assert echo.totals(1) == (200_001, 200_001) == (conn.tx, conn.rx)


def test_host_is_the_name_asked_for_not_one_resolved_earlier(peer):
    echo = peer("echo")
    with netstats.capture() as cap:
        with socket.create_connection(("localhost", echo.port)) as named:
            named.sendall(b"n")
            drain(named, 1)
        with socket.create_connection(("127.0.0.1", echo.port)) as literal:
            literal.sendall(b"l")
            drain(literal, 1)
    named_conn, literal_conn = [c for c in cap.connections if c.error is None]
    assert named_conn.host == "localhost"
    assert literal_conn.host is None  # the same address, asked for by number


@pytest.mark.parametrize("mode", MODES)
def test_an_address_asked_for_by_number_never_takes_a_name_looked_up_for_another(peer, mode):
    """After connections to "localhost" (looked up on this thread, and by asyncio on a worker
    thread), connections to 127.0.0.1 asked for by number have no host: a plain connect(),
    asyncio's, an accepted connection's, and one made by C code (the census's, to a port that no
    lookup gave)."""
    echo, other = peer("echo"), peer("echo")
    literal = ("127.0.0.1", echo.port)

    async def asyncio_pair() -> None:
        for host in ("localhost", "127.0.0.1"):
            reader, writer = await asyncio.open_connection(host, echo.port)
            writer.write(b"a")
            assert await reader.readexactly(1) == b"a"
            writer.close()
            await writer.wait_closed()

    with capture_in(mode, servers=True) as cap:
        socket.getaddrinfo("localhost", None)  # a lookup no connection follows (of no port)
        with socket.create_connection(("localhost", echo.port)) as named:
            named.sendall(b"n")
            drain(named, 1)
        with socket.socket() as plain:
            plain.connect(literal)
            plain.sendall(b"p")
            drain(plain, 1)
        asyncio.run(asyncio_pair())
        with socket.create_server(("127.0.0.1", 0)) as listener:
            served = listener.getsockname()[1]
            with socket.create_connection(("localhost", served)):
                accepted, _ = listener.accept()
                accepted.close()
        raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)  # the C type: the census finds it
        raw.connect(("127.0.0.1", other.port))
        found = wait_for(lambda: [c for c in cap.connections if c.source == "kernel"], 10, "the census")
        raw.close()
    made = [c for c in cap.connections if c.error is None]
    hosts = [(c.side, c.source, c.remote[1] if c.side == "client" else "peer", c.host) for c in made]
    assert hosts == [
        ("client", "python", echo.port, "localhost"),
        ("client", "python", echo.port, None),
        ("client", "python", echo.port, "localhost"),  # asyncio's lookup, on a worker thread
        ("client", "python", echo.port, None),
        ("client", "python", served, "localhost"),
        ("server", "python", "peer", None),
        ("client", "kernel", other.port, None),
    ], hosts
    assert found[0].host is None


def test_a_name_given_to_connect_itself_is_the_host(peer):
    """connect(("localhost", port)) resolves in C, no getaddrinfo() seen: the name is the host."""
    echo = peer("echo")
    with netstats.capture() as cap, socket.socket() as s:
        s.connect(("localhost", echo.port))
        s.sendall(b"x")
        drain(s, 1)
    (conn,) = cap.connections
    assert conn.host == "localhost" and conn.remote == ("127.0.0.1", echo.port)
