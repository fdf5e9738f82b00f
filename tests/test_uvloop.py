"""uvloop: application bytes exact (the plaintext for TLS), source "python", for clients
(aiohttp, asyncio streams) and accepted server connections (asyncio.start_server, uvicorn),
in both counting modes, whether uvloop was imported before the capture or during it.

libuv does the I/O in C: netstats learns of each transport from the loop's methods (see
src/netstats/_sources/uvloop.py). Every expected figure comes from the peer's own count
(tests/peers.py) or from the test's own stdlib client: never from netstats.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from helpers import MODES, capture_in, drain

import netstats

uvloop = pytest.importorskip("uvloop")

N = 100_000
TIMEOUT = 60


def run(main: Callable[[], Any]) -> Any:
    return uvloop.run(asyncio.wait_for(main(), TIMEOUT))


def only(cap: netstats.Capture, side: str) -> netstats.Connection:
    (conn,) = [c for c in cap.connections if c.side == side and c.error is None]
    return conn


async def until_closed(conn: netstats.Connection) -> None:
    """The record ends when uvloop tells the protocol its connection is lost (event-driven
    on the loop; bounded)."""
    for _ in range(TIMEOUT * 100):
        if conn.closed is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{conn!r} never closed")


# ---- clients --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_aiohttp_client_counts_application_bytes_exactly(
    peer: Any, client_context: ssl.SSLContext, tls: bool, mode: str
) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    http = peer("http", tls=tls)
    scheme = "https" if tls else "http"
    events: list[tuple[str, int | None]] = []

    async def main() -> int:
        async with aiohttp.ClientSession() as session:
            url = f"{scheme}://localhost:{http.port}/bytes/{N}"
            async with session.get(url, ssl=client_context if tls else None) as response:
                return len(await response.read())

    with capture_in(mode, events if mode == "wrapped" else None) as cap:
        assert run(main) == N
    (served,) = http.wait_closed(1)
    conn = only(cap, "client")
    assert (conn.rx, conn.tx) == (served["tx"], served["rx"])
    assert conn.source == "python"
    assert (conn.tls is not None) == tls
    assert conn.closed is not None
    if mode == "wrapped" and tls:  # the TLS object's reads and writes, one event each
        assert sum(n or 0 for e, n in events if e == "read") == served["tx"]
        assert sum(n or 0 for e, n in events if e == "write") == served["rx"]


@pytest.mark.parametrize("mode", MODES)
def test_plain_client_has_no_per_call_events_and_says_so(peer: Any, mode: str) -> None:
    """No Python code runs per read or write on plain TCP under uvloop: rx/tx come from the
    kernel in both modes, and reads/writes are None (unknown), never 0."""
    echo = peer("echo")
    events: list[tuple[str, int | None]] = []

    async def main() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", echo.port)
        writer.write(b"x" * N)
        await reader.readexactly(N)
        writer.close()
        await writer.wait_closed()

    with capture_in(mode, events) as cap:
        run(main)
    (served,) = echo.wait_closed(1)
    conn = only(cap, "client")
    assert (conn.rx, conn.tx) == (served["tx"], served["rx"]) == (N, N)
    assert (conn.reads, conn.writes) == (None, None)
    assert [e for e, _ in events] == ["open", "connect", "close"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("closer", ["client", "server"], ids=["client-closes", "server-closes"])
def test_tls_client_has_exact_wire_bytes(
    peer: Any, client_context: ssl.SSLContext, mode: str, closer: str
) -> None:
    """uvloop closes a TLS connection's descriptor a loop turn before the program's protocol hears
    of it, and the kernel may destroy the socket meanwhile: the census follows it and the record
    ends with the kernel's final figures. The truth: a plain relay in front of the TLS server,
    counting the ciphertext (wire_rx/wire_tx were None)."""
    backend = peer("echo" if closer == "client" else "http", tls=True)
    relay = peer("relay", backend=backend.address)
    request = b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % N

    async def main() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", relay.port, ssl=client_context, server_hostname="localhost"
        )
        if closer == "client":
            writer.write(b"x" * N)
            await reader.readexactly(N)
        else:
            writer.write(request)
            assert len(await reader.read()) > N  # to the end: the server closes first
        writer.close()
        await writer.wait_closed()
        await until_closed(only(cap, "client"))

    with capture_in(mode) as cap:
        run(main)
    (relayed,) = relay.wait_closed(1)
    (served,) = backend.wait_closed(1)
    conn = only(cap, "client")
    assert (conn.wire_tx, conn.wire_rx) == (relayed["rx"], relayed["tx"])
    assert (conn.tx, conn.rx) == (served["rx"], served["tx"])
    assert conn.tls is not None and conn.source == "python"


def test_the_programs_protocol_and_transport_are_its_own(peer: Any) -> None:
    echo = peer("echo")
    seen: dict[str, Any] = {}

    class Echo(asyncio.Protocol):
        def __init__(self) -> None:
            self.done = asyncio.get_running_loop().create_future()
            self.got = 0

        def connection_made(self, transport: Any) -> None:
            seen["made"] = transport
            transport.write(b"x" * 1000)

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got == 1000:
                seen["transport"].close()

        def connection_lost(self, exc: Any) -> None:
            self.done.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(Echo, "127.0.0.1", echo.port)
        seen["transport"], seen["protocol"] = transport, protocol
        assert transport.get_protocol() is protocol
        await protocol.done

    with netstats.capture() as cap:
        run(main)
    assert seen["made"] is seen["transport"]
    assert vars(seen["protocol"]) == {"done": seen["protocol"].done, "got": 1000}  # no hook left
    (served,) = echo.wait_closed(1)
    assert (only(cap, "client").rx, only(cap, "client").tx) == (served["tx"], served["rx"]) == (1000, 1000)


def test_loop_methods_are_uvloops_own_again_after_the_capture() -> None:
    stock = {name: getattr(uvloop.Loop, name) for name in ("create_connection", "create_server")}
    with netstats.capture():
        assert "create_connection" in vars(uvloop.Loop)
    assert "create_connection" not in vars(uvloop.Loop)
    assert {name: getattr(uvloop.Loop, name) for name in stock} == stock


@pytest.mark.parametrize("mode", MODES)
def test_start_tls_counts_plain_bytes_then_the_plaintext(
    peer: Any, client_context: ssl.SSLContext, mode: str
) -> None:
    starttls = peer("starttls", tls=True)
    command, ok = b"STARTTLS\r\n", b"OK\r\n"

    async def main() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", starttls.port)
        writer.write(command)
        assert await reader.readline() == ok
        await writer.start_tls(client_context, server_hostname="localhost")
        writer.write(b"x" * N)
        await reader.readexactly(N)
        writer.close()
        await writer.wait_closed()

    with capture_in(mode) as cap:
        run(main)
    (served,) = starttls.wait_closed(1)
    assert (served["plain_rx"], served["plain_tx"]) == (len(command), len(ok))
    conn = only(cap, "client")
    assert (conn.rx, conn.tx) == (served["tx"], served["rx"]) == (len(ok) + N, len(command) + N)
    assert conn.tls is not None and conn.host == "localhost"
    assert conn.wire_rx > conn.rx and conn.wire_tx > conn.tx  # the census followed it once TLS began


# ---- servers ------------------------------------------------------------------------------


def talk(port: int, tls: bool, context: ssl.SSLContext | None) -> tuple[int, int]:
    """The test's own stdlib client: send N, read N, read to the end; (sent, received)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock: Any = context.wrap_socket(raw, server_hostname="localhost") if tls and context else raw
    with sock:
        sock.sendall(b"x" * N)
        received = len(drain(sock, N))
        while chunk := sock.recv(65536):
            received += len(chunk)
    return N, received


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_start_server_counts_accepted_connections_exactly(
    cert_file: str, client_context: ssl.SSLContext, tls: bool, mode: str
) -> None:
    server_context = None
    if tls:
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert_file)
    records: list[netstats.Connection] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(N)
        writer.write(b"y" * N)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> tuple[int, int]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            io = await asyncio.to_thread(talk, port, tls, client_context)
            records.extend(c for c in cap.connections if c.side == "server")
            for conn in records:
                await until_closed(conn)
        return io

    with capture_in(mode, servers=True) as cap:
        sent, received = run(main)
    conn = only(cap, "server")
    assert (conn.rx, conn.tx) == (sent, received) == (N, N)
    assert conn.source == "python"
    assert (conn.tls is not None) == tls


@pytest.mark.parametrize("mode", MODES)
def test_uvicorn_counts_accepted_connections_exactly(mode: str) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % N)]}
        )
        await send({"type": "http.response.body", "body": b"z" * N})

    def fetch(port: int) -> tuple[int, int]:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(request)
            received = 0
            while chunk := sock.recv(65536):
                received += len(chunk)
        return len(request), received

    async def main() -> tuple[int, int]:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, loop="none", http="h11", lifespan="off")
        config.log_level = "warning"
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        for _ in range(TIMEOUT * 100):
            if server.started:
                break
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        io = await asyncio.to_thread(fetch, port)
        for conn in [c for c in cap.connections if c.side == "server"]:
            await until_closed(conn)
        server.should_exit = True
        await task
        return io

    with capture_in(mode, servers=True) as cap:
        sent, received = run(main)
    conn = only(cap, "server")
    assert received > N  # the head, then the body
    assert (conn.rx, conn.tx) == (sent, received)
    assert conn.source == "python"


def test_a_server_made_during_the_capture_is_uvloops_own_after_it(peer: Any) -> None:
    """Its factory outlives the capture: connections accepted after it are not hooked, not recorded."""
    protocols: list[asyncio.Protocol] = []

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            protocols.append(self)

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)
            self.transport.close()

    def ask(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"ping")
            return drain(sock, 4)

    async def main() -> None:
        with netstats.capture(servers=True) as cap:
            server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            assert await asyncio.to_thread(ask, port) == b"ping"
            await until_closed(only(cap, "server"))
        assert await asyncio.to_thread(ask, port) == b"ping"  # after the capture
        server.close()
        await server.wait_closed()
        assert len(cap.connections) == 2  # the server's and the test's client, both during it
        assert [vars(p) for p in protocols] == [{"transport": p.transport} for p in protocols]

    run(main)


def test_a_protocol_with_slots_is_left_alone_and_never_counted_as_zero(peer: Any) -> None:
    echo = peer("echo")

    class Slotted(asyncio.Protocol):
        __slots__ = ("got", "done")

        def __init__(self) -> None:
            self.got = 0
            self.done = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got == 1000 and not self.done.done():
                self.done.set_result(None)

    async def main() -> None:
        transport, protocol = await asyncio.get_running_loop().create_connection(
            Slotted, "127.0.0.1", echo.port
        )
        transport.write(b"x" * 1000)
        await protocol.done
        for _ in range(300):  # 3 s: the census finds a connection open 0.5 s (on Linux)
            if cap.connections or sys.platform != "linux":
                break
            await asyncio.sleep(0.01)
        transport.close()

    with netstats.capture() as cap:
        run(main)
    assert all(c.source == "kernel" and c.rx is None for c in cap.connections), cap.connections


# ---- imported during the capture ------------------------------------------------------------

CHILD = r"""
import asyncio, json, sys
port, mode = int(sys.argv[1]), sys.argv[2]
import netstats
cap = netstats.capture((lambda *a: None) if mode == "wrapped" else None)
cap.__enter__()
import uvloop

async def main():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * 100000)
    await reader.readexactly(100000)
    writer.close()
    await writer.wait_closed()

uvloop.run(main())
cap.__exit__(None, None, None)
uvloop.run(main())  # after the capture: uvloop's own methods again
print(json.dumps([{"rx": c.rx, "tx": c.tx, "source": c.source} for c in cap.connections]))
"""


@pytest.mark.parametrize("mode", MODES)
def test_uvloop_imported_during_the_capture_is_counted(peer: Any, mode: str) -> None:
    echo = peer("echo")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(echo.port), mode], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    assert "internal error" not in out.stderr, out.stderr
    (record,) = json.loads(out.stdout.splitlines()[-1])
    captured, after = echo.wait_closed(2)
    assert (record["rx"], record["tx"]) == (captured["tx"], captured["rx"]) == (N, N)
    assert after["rx"] == N
    assert record["source"] == "python"
