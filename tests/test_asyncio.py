"""asyncio on its default event loop: streams, protocols, sock_* calls, STARTTLS, servers, UDP.

Every expected figure comes from the peer's own count (tests/peers.py, another process) or
from a payload whose size the test chose; never from netstats. Each test drives its loop with
asyncio.run() and bounds every wait with asyncio.wait_for().
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from helpers import established

import netstats

T = TypeVar("T")

WAIT = 5.0  # seconds any single await may take
PAYLOAD = bytes(range(256)) * 400  # 102_400 bytes: many TLS records, many reads
N = len(PAYLOAD)


async def within(aw: Awaitable[T], seconds: float = WAIT) -> T:
    return await asyncio.wait_for(aw, seconds)


def the_connection(cap: netstats.Capture) -> netstats.Connection:
    (conn,) = established(cap)
    return conn


class Recorder:
    """A capture callback keeping (event, conn, nbytes) in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, netstats.Connection, int | None]] = []

    def __call__(self, event: str, conn: netstats.Connection, nbytes: int | None) -> None:
        self.calls.append((event, conn, nbytes))

    def events(self, conn: netstats.Connection) -> list[str]:
        return [event for event, c, _ in self.calls if c is conn]

    def total(self, conn: netstats.Connection, event: str) -> int:
        return sum(n or 0 for e, c, n in self.calls if c is conn and e == event)


# ---- streams ------------------------------------------------------------------------------


async def echo_through_stream(host: str, port: int, **kwargs: Any) -> bytes:
    """Write PAYLOAD, read it back (readexactly, then read), close: the echo peer's whole life."""
    reader, writer = await within(asyncio.open_connection(host, port, **kwargs))
    writer.write(PAYLOAD[: N // 2])
    await within(writer.drain())
    writer.write(PAYLOAD[N // 2 :])
    await within(writer.drain())
    echoed = bytearray(await within(reader.readexactly(1000)))
    while len(echoed) < N:
        chunk = await within(reader.read(65536))
        assert chunk, "the echo peer closed early"
        echoed += chunk
    writer.close()
    await within(writer.wait_closed())
    return bytes(echoed)


def test_open_connection_counts_what_the_echo_peer_counted(peer):
    echo = peer("echo")
    with netstats.capture() as cap:
        echoed = asyncio.run(echo_through_stream(*echo.address))
    peer_rx, peer_tx = echo.totals(1)
    assert echoed == PAYLOAD
    conn = the_connection(cap)
    assert (conn.tx, conn.rx) == (peer_rx, peer_tx) == (N, N)
    assert conn.tls is None
    assert conn.side == "client" and conn.transport == "tcp"
    assert conn.remote == echo.address
    assert conn.closed is not None
    assert (cap.tx, cap.rx) == (N, N)


@pytest.mark.parametrize(
    "host, kwargs",
    [("127.0.0.1", {"server_hostname": "localhost"}), ("localhost", {})],
    ids=["address+server_hostname", "name"],
)
def test_open_connection_over_tls_counts_the_plaintext_the_peer_counted(peer, client_context, host, kwargs):
    echo = peer("echo", tls=True)
    with netstats.capture() as cap:
        echoed = asyncio.run(echo_through_stream(host, echo.port, ssl=client_context, **kwargs))
    peer_rx, peer_tx = echo.totals(1)
    assert echoed == PAYLOAD
    conn = the_connection(cap)
    assert conn.tls is not None and conn.tls.startswith("TLS")
    assert conn.host == "localhost"
    assert (conn.tx, conn.rx) == (peer_rx, peer_tx) == (N, N)
    assert conn.closed is not None
    assert (cap.tx, cap.rx) == (N, N)


# ---- protocols ----------------------------------------------------------------------------

BODY = 50_000


def http_request(size: int) -> bytes:
    return f"GET /bytes/{size} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


class Response:
    """Sends a request on connection_made and keeps what it receives; `complete()` waits for
    the whole response (head and Content-Length body), `closed` for connection_lost."""

    data: bytearray

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = bytearray()
        self.changed = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.changed.set()

    def received(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data
        self.changed.set()

    def is_complete(self) -> bool:
        head, sep, body = bytes(self.data).partition(b"\r\n\r\n")
        if not sep:
            return False
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return len(body) >= length

    async def complete(self) -> bytes:
        while not self.is_complete():
            assert not self.closed.done(), "the peer closed early"
            self.changed.clear()
            await within(self.changed.wait())
        return bytes(self.data)


class Collect(Response, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self.received(data)


class CollectInto(Response, asyncio.BufferedProtocol):
    """The BufferedProtocol flavour, with a small buffer (many recv_into / SSLObject.read into)."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.buffer = bytearray(4096)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.received(memoryview(self.buffer)[:nbytes])


async def fetch_with_protocol(factory: Callable[[bytes], Any], port: int, **kwargs: Any) -> bytes:
    loop = asyncio.get_running_loop()
    protocol = factory(http_request(BODY))
    transport, _ = await within(loop.create_connection(lambda: protocol, "127.0.0.1", port, **kwargs))
    response = await protocol.complete()
    transport.close()  # the http peer keeps the connection alive: the client ends it
    await within(protocol.closed)
    return response


@pytest.mark.parametrize("factory", [Collect, CollectInto], ids=["Protocol", "BufferedProtocol"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_create_connection_counts_what_the_http_peer_counted(peer, client_context, factory, tls):
    http = peer("http", tls=tls)
    kwargs = {"ssl": client_context, "server_hostname": "localhost"} if tls else {}
    with netstats.capture() as cap:
        response = asyncio.run(fetch_with_protocol(factory, http.port, **kwargs))
    peer_rx, peer_tx = http.totals(1)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\n" + b"b" * BODY)
    conn = the_connection(cap)
    assert (conn.tx, conn.rx) == (peer_rx, peer_tx) == (len(http_request(BODY)), len(response))
    if tls:
        assert conn.tls is not None and conn.tls.startswith("TLS")
        assert conn.host == "localhost"
    else:
        assert conn.tls is None
    assert conn.closed is not None


# ---- loop.sock_* ------------------------------------------------------------------------


async def echo_with_sock_calls(address: tuple[str, int]) -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await within(loop.sock_connect(sock, address))
        await within(loop.sock_sendall(sock, PAYLOAD))
        echoed = bytearray(await within(loop.sock_recv(sock, 1000)))
        buffer = bytearray(8192)
        while len(echoed) < N:
            n = await within(loop.sock_recv_into(sock, buffer))
            assert n, "the echo peer closed early"
            echoed += buffer[:n]
    finally:
        sock.close()
    return bytes(echoed)


def test_loop_sock_calls_on_a_nonblocking_socket_count_what_the_peer_counted(peer):
    echo = peer("echo")
    with netstats.capture() as cap:
        echoed = asyncio.run(echo_with_sock_calls(echo.address))
    peer_rx, peer_tx = echo.totals(1)
    assert echoed == PAYLOAD
    conn = the_connection(cap)
    assert (conn.tx, conn.rx) == (peer_rx, peer_tx) == (N, N)
    assert conn.remote == echo.address
    assert conn.connected is not None and conn.closed is not None


# ---- STARTTLS -----------------------------------------------------------------------------

COMMAND, REPLY_OK = b"STARTTLS\r\n", b"OK\r\n"


class Conversation(asyncio.Protocol):
    """Keeps what it receives; `until(n)` waits for n bytes in total."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.changed = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.changed.set()

    async def until(self, n: int) -> bytes:
        while len(self.data) < n:
            assert not self.closed.done(), "the peer closed early"
            self.changed.clear()
            await within(self.changed.wait())
        return bytes(self.data)


async def starttls_with_loop_start_tls(port: int, context: ssl.SSLContext) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await within(loop.create_connection(Conversation, "127.0.0.1", port))
    transport.write(COMMAND)
    assert await protocol.until(len(REPLY_OK)) == REPLY_OK
    protocol.data.clear()
    tls_transport = await within(loop.start_tls(transport, protocol, context, server_hostname="localhost"))
    tls_transport.write(PAYLOAD)
    echoed = await protocol.until(N)
    tls_transport.close()
    await within(protocol.closed)
    return echoed


async def starttls_with_stream_writer(port: int, context: ssl.SSLContext) -> bytes:
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
    writer.write(COMMAND)
    await within(writer.drain())
    assert await within(reader.readline()) == REPLY_OK
    await within(writer.start_tls(context, server_hostname="localhost"))  # type: ignore[attr-defined]
    writer.write(PAYLOAD)
    await within(writer.drain())
    echoed = await within(reader.readexactly(N))
    writer.close()
    await within(writer.wait_closed())
    return echoed


@pytest.mark.parametrize(
    "upgrade",
    [
        pytest.param(starttls_with_loop_start_tls, id="loop.start_tls"),
        pytest.param(
            starttls_with_stream_writer,
            id="StreamWriter.start_tls",
            marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls is 3.11+"),
        ),
    ],
)
def test_start_tls_counts_the_plain_bytes_before_the_upgrade_and_the_plaintext_after(
    peer, client_context, upgrade
):
    starttls = peer("starttls", tls=True)
    with netstats.capture() as cap:
        echoed = asyncio.run(upgrade(starttls.port, client_context))
    (record,) = starttls.wait_closed(1)
    assert echoed == PAYLOAD
    assert record["tls"].startswith("TLS")
    assert (record["plain_rx"], record["plain_tx"]) == (len(COMMAND), len(REPLY_OK))
    conn = the_connection(cap)
    assert conn.tls is not None and conn.tls.startswith("TLS")
    assert conn.host == "localhost"
    assert (conn.tx, conn.rx) == (record["rx"], record["tx"]) == (len(COMMAND) + N, len(REPLY_OK) + N)
    assert conn.closed is not None


# ---- servers ------------------------------------------------------------------------------

REQUEST_SIZE, REPLY_SIZE = 30_000, 70_000


def blocking_client(sock: socket.socket, port: int) -> tuple[Any, int]:
    """In a thread: send REQUEST_SIZE bytes, read the reply to EOF; (local address, bytes read)."""
    sock.settimeout(WAIT)
    with sock:
        sock.connect(("127.0.0.1", port))
        local = sock.getsockname()
        sock.sendall(b"q" * REQUEST_SIZE)
        received = 0
        while chunk := sock.recv(65536):
            received += len(chunk)
    return local, received


async def serve_one_client(client_sock: socket.socket, server_ssl: ssl.SSLContext | None = None) -> Any:
    """An asyncio server started here (so under the capture); one client from a thread."""
    loop = asyncio.get_running_loop()
    handled: asyncio.Future[int] = loop.create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await within(reader.readexactly(REQUEST_SIZE))
        writer.write(b"r" * REPLY_SIZE)
        await within(writer.drain())
        writer.close()
        await within(writer.wait_closed())
        handled.set_result(len(request))

    server = await within(asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ssl))
    port = server.sockets[0].getsockname()[1]
    try:
        local, received = await within(asyncio.to_thread(blocking_client, client_sock, port))
        assert await within(handled) == REQUEST_SIZE
    finally:
        server.close()
        await within(server.wait_closed())
    assert received == REPLY_SIZE
    return local, port


def test_start_server_with_servers_true_reports_the_accepted_connection_only():
    client_sock = socket.socket()  # made before the capture: the stock class, the client uncounted
    with netstats.capture(servers=True) as cap:
        client_local, port = asyncio.run(serve_one_client(client_sock))
    assert cap.count == 1  # not the listener, not the loop's self-pipe
    (conn,) = cap.connections
    assert conn.side == "server" and conn.transport == "tcp"
    assert (conn.rx, conn.tx) == (REQUEST_SIZE, REPLY_SIZE)
    assert conn.remote == client_local
    assert conn.local == ("127.0.0.1", port)
    assert conn.error is None and conn.tls is None
    assert conn.connected is not None and conn.closed is not None
    assert (cap.rx, cap.tx) == (REQUEST_SIZE, REPLY_SIZE)


def test_start_server_over_tls_with_servers_true_counts_the_plaintext(cert_file, ca):
    server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ssl.load_cert_chain(cert_file)
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    client_sock = client_ssl.wrap_socket(socket.socket(), server_hostname="localhost")  # before the capture
    with netstats.capture(servers=True) as cap:
        client_local, port = asyncio.run(serve_one_client(client_sock, server_ssl))
    (conn,) = cap.connections
    assert conn.side == "server"
    assert conn.tls is not None and conn.tls.startswith("TLS")
    assert (conn.rx, conn.tx) == (REQUEST_SIZE, REPLY_SIZE)
    assert conn.remote == client_local
    assert conn.closed is not None


def test_start_server_with_servers_false_reports_no_connection():
    client_sock = socket.socket()  # made before the capture: the stock class, the client uncounted
    with netstats.capture(servers=False) as cap:
        asyncio.run(serve_one_client(client_sock))  # the exchange itself still happens in full
    assert cap.connections == []
    assert cap.count == 0
    assert (cap.rx, cap.tx) == (0, 0)


# ---- UDP ----------------------------------------------------------------------------------

DATAGRAMS = [1, 512, 1400, 8000]


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.all_back: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sizes.append(len(data))
        if len(self.sizes) == len(DATAGRAMS) and not self.all_back.done():
            self.all_back.set_result(None)


async def udp_round_trip(address: tuple[str, int]) -> list[int]:
    loop = asyncio.get_running_loop()
    transport, protocol = await within(loop.create_datagram_endpoint(Datagrams, remote_addr=address))
    try:
        for size in DATAGRAMS:
            transport.sendto(b"d" * size)
        await within(protocol.all_back)
    finally:
        transport.close()
    await asyncio.sleep(0)  # the transport closes its socket on the next iteration
    return sorted(protocol.sizes)


def peer_udp_counts(udp: Any, expected: int) -> tuple[int, int]:
    """The udp peer's record never closes: poll until it has counted its echoes (or time out)."""
    deadline = time.monotonic() + WAIT
    while True:
        (record,) = udp.counts()
        if (record["rx"], record["tx"]) == (expected, expected) or time.monotonic() > deadline:
            return record["rx"], record["tx"]
        time.sleep(0.01)


def test_create_datagram_endpoint_counts_each_datagram(peer):
    udp = peer("udp")
    with netstats.capture() as cap:
        sizes = asyncio.run(udp_round_trip(udp.address))
    total = sum(DATAGRAMS)
    assert sizes == sorted(DATAGRAMS)
    assert peer_udp_counts(udp, total) == (total, total)
    conn = the_connection(cap)
    assert conn.transport == "udp"
    assert conn.remote == udp.address
    assert (conn.tx, conn.rx) == (total, total)
    assert (conn.writes, conn.reads) == (len(DATAGRAMS), len(DATAGRAMS))
    assert conn.closed is not None


# ---- the loop's own sockets -----------------------------------------------------------------


async def no_network() -> None:
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    # call_soon_threadsafe writes to the self-pipe; run_in_executor wakes the loop through it too.
    threading.Thread(target=loop.call_soon_threadsafe, args=(woken.set_result, None)).start()
    await within(woken)
    await within(loop.run_in_executor(None, time.sleep, 0.01))
    await asyncio.sleep(0.01)


def test_the_event_loops_self_pipe_is_never_a_connection():
    recorder = Recorder()
    with netstats.capture(recorder, servers=True) as cap:
        asyncio.run(no_network())
    assert cap.connections == []
    assert cap.count == 0
    assert (cap.rx, cap.tx) == (0, 0)
    assert recorder.calls == []


# ---- failed connect -----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_open_connection_to_a_closed_port_raises_unchanged_and_records_the_error():
    port = closed_port()
    recorder = Recorder()
    with netstats.capture(recorder) as cap:
        with pytest.raises(ConnectionRefusedError) as raised:
            asyncio.run(within(asyncio.open_connection("127.0.0.1", port)))
    assert type(raised.value) is ConnectionRefusedError
    (conn,) = cap.connections
    assert conn.error == "ConnectionRefusedError"
    assert conn.remote == ("127.0.0.1", port)
    assert (conn.rx, conn.tx) == (0, 0)
    assert conn.connected is None and conn.closed is not None
    assert recorder.events(conn) == ["open", "close"]


# ---- callbacks ----------------------------------------------------------------------------


def test_callbacks_of_an_asyncio_tls_connection_run_open_connect_io_close_and_sum_to_the_counts(
    peer, client_context
):
    echo = peer("echo", tls=True)
    recorder = Recorder()
    with netstats.capture(recorder) as cap:
        echoed = asyncio.run(
            echo_through_stream("127.0.0.1", echo.port, ssl=client_context, server_hostname="localhost")
        )
    peer_rx, peer_tx = echo.totals(1)
    assert echoed == PAYLOAD
    (conn,) = cap.connections
    events = recorder.events(conn)
    assert events[:2] == ["open", "connect"]
    assert events[-1] == "close" and events.count("close") == 1
    assert set(events[2:-1]) == {"read", "write"}
    assert all(n is not None and n > 0 for e, c, n in recorder.calls if e in ("read", "write"))
    assert recorder.total(conn, "read") == conn.rx == peer_tx == N
    assert recorder.total(conn, "write") == conn.tx == peer_rx == N
    assert {c.id for _, c, _ in recorder.calls} == {conn.id}
