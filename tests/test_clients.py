"""Real third-party clients: netstats counts, to the byte, what the independent peer counted.

Each client library talks to a peer process on 127.0.0.1 (see peers.py), over plain TCP and
over TLS (trustme certificates for "localhost"). The expected figures are the peer's own counts
(or sizes the test chose); netstats' per-connection rx/tx must equal the peer's tx/rx, and the
capture's totals must equal the peer's totals. Clients connect by the name "localhost"; if it
resolves to ::1 first, the refused attempt is a Connection with error "ConnectionRefusedError"
and no bytes, by design: `established()` leaves such attempts out.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import httpx
import pytest
import redis
import redis.asyncio
import requests
import websockets.asyncio.client
import websockets.sync.client
from helpers import established
from peers import Peer

import netstats

TLS = pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
TIMEOUT = 5.0  # seconds, for every client operation
SIZES = (0, 1, 5_000, 1_048_576)  # response bodies asked of the http peer
UPLOAD = 200_000  # bytes of a POST body
THIS_FILE = os.path.join("tests", "test_clients.py")

PeerFactory = Callable[..., Peer]


# ---- helpers ----------------------------------------------------------------------------


def http_url(p: Peer, tls: bool, path: str) -> str:
    return f"{'https' if tls else 'http'}://localhost:{p.port}{path}"


def in_package(path: str | None, packages: Sequence[str]) -> bool:
    return path is not None and any(f"site-packages{os.sep}{pkg}{os.sep}" in path for pkg in packages)


def assert_matches_peer(
    cap: netstats.Capture, p: Peer, n: int, *, tls: bool, origin: Sequence[str], ordered: bool = True
) -> list[netstats.Connection]:
    """The capture made n connections to p, each counted exactly as p counted it (mirrored).

    `ordered`: connections were made one after another, so netstats' order is the peer's
    accept order; otherwise (concurrent connections) the two sets of figures are compared.
    """
    records = p.wait_closed(n)
    assert len(p.counts()) == n, f"the peer saw {p.counts()}, expected {n} connections"
    conns = established(cap)
    assert len(conns) == n, f"netstats saw {conns}, expected {n} connections"
    seen = [(c.rx, c.tx) for c in conns]
    expected = [(r["tx"], r["rx"]) for r in records]
    if ordered:
        assert seen == expected
    else:
        assert sorted(seen) == sorted(expected)
    assert (cap.rx, cap.tx) == (sum(r["tx"] for r in records), sum(r["rx"] for r in records))
    for attempt in cap.connections:
        if attempt.error is not None:  # e.g. refused on ::1 before 127.0.0.1 answered
            assert (attempt.rx, attempt.tx) == (0, 0), attempt
    for conn in conns:
        assert conn.transport == "tcp"
        assert conn.host == "localhost"
        assert conn.remote == ("127.0.0.1", p.port)
        assert conn.connected is not None
        assert conn.closed is not None, f"{conn} is still open after the client was closed"
        if tls:
            assert conn.tls is not None and conn.tls.startswith("TLS"), conn.tls
        else:
            assert conn.tls is None
        assert in_package(conn.origin, origin), f"origin {conn.origin!r} is not in {origin}"
        assert conn.caller is not None and THIS_FILE in conn.caller, conn.caller
    return conns


# ---- requests (urllib3) -----------------------------------------------------------------

REQUESTS_ORIGIN = ("urllib3", "requests")


def requests_session(tls: bool, ca_file: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_file if tls else True
    return session


def fetch(session: requests.Session, method: str, url: str, **kwargs: Any) -> bytes:
    """The body of one request. A requests Response keeps its socket open for as long as it
    lives (urllib3 holds the socket's makefile() reader), even after Session.close(): only
    the body leaves this function, so the socket really closes when the session does."""
    with session.request(method, url, timeout=TIMEOUT, **kwargs) as response:
        assert response.status_code == 200
        return response.content


@TLS
@pytest.mark.parametrize("size", SIZES)
def test_requests_get_counts_exactly_the_bytes_the_peer_exchanged(
    peer: PeerFactory, ca_file: str, tls: bool, size: int
) -> None:
    http = peer("http", tls=tls)
    with netstats.capture() as cap:
        with requests_session(tls, ca_file) as session:
            assert len(fetch(session, "GET", http_url(http, tls, f"/bytes/{size}"))) == size
    (conn,) = assert_matches_peer(cap, http, 1, tls=tls, origin=REQUESTS_ORIGIN)
    assert conn.rx > size  # the body and its headers


@TLS
def test_requests_post_counts_the_uploaded_body_as_the_peer_read_it(
    peer: PeerFactory, ca_file: str, tls: bool
) -> None:
    http = peer("http", tls=tls)
    with netstats.capture() as cap:
        with requests_session(tls, ca_file) as session:
            assert fetch(session, "POST", http_url(http, tls, "/upload"), data=b"u" * UPLOAD) == b"ok"
    (conn,) = assert_matches_peer(cap, http, 1, tls=tls, origin=REQUESTS_ORIGIN)
    assert conn.tx > UPLOAD


@TLS
def test_requests_session_reuses_one_connection_and_counts_every_request_on_it(
    peer: PeerFactory, ca_file: str, tls: bool
) -> None:
    http = peer("http", tls=tls)
    with netstats.capture() as cap:
        with requests_session(tls, ca_file) as session:
            for size in SIZES:
                assert len(fetch(session, "GET", http_url(http, tls, f"/bytes/{size}"))) == size
            assert fetch(session, "POST", http_url(http, tls, "/upload"), data=b"u" * UPLOAD) == b"ok"
    (conn,) = assert_matches_peer(cap, http, 1, tls=tls, origin=REQUESTS_ORIGIN)
    assert conn.rx > sum(SIZES)
    assert conn.tx > UPLOAD


# ---- httpx ------------------------------------------------------------------------------


@TLS
def test_httpx_client_counts_gets_and_a_post_on_its_keepalive_connection(
    peer: PeerFactory, client_context: ssl.SSLContext, tls: bool
) -> None:
    http = peer("http", tls=tls)
    with netstats.capture() as cap:
        with httpx.Client(verify=client_context, timeout=TIMEOUT, trust_env=False) as client:
            for size in SIZES:
                assert len(client.get(http_url(http, tls, f"/bytes/{size}")).content) == size
            assert client.post(http_url(http, tls, "/upload"), content=b"u" * UPLOAD).content == b"ok"
    (conn,) = assert_matches_peer(cap, http, 1, tls=tls, origin=("httpcore",))
    assert conn.rx > sum(SIZES)
    assert conn.tx > UPLOAD


@TLS
def test_httpx_async_client_counts_gets_and_a_post_on_its_keepalive_connection(
    peer: PeerFactory, client_context: ssl.SSLContext, tls: bool
) -> None:
    http = peer("http", tls=tls)

    async def main() -> None:
        async with httpx.AsyncClient(verify=client_context, timeout=TIMEOUT, trust_env=False) as client:
            for size in SIZES:
                assert len((await client.get(http_url(http, tls, f"/bytes/{size}"))).content) == size
            response = await client.post(http_url(http, tls, "/upload"), content=b"u" * UPLOAD)
            assert response.content == b"ok"

    with netstats.capture() as cap:
        asyncio.run(main())
    # httpcore connects through anyio.connect_tcp, so the connect call is made in anyio.
    (conn,) = assert_matches_peer(cap, http, 1, tls=tls, origin=("httpcore", "anyio"))
    assert conn.rx > sum(SIZES)
    assert conn.tx > UPLOAD


# ---- aiohttp ----------------------------------------------------------------------------

# aiohttp connects through aiohappyeyeballs.start_connection (a dependency of aiohttp).
AIOHTTP_ORIGIN = ("aiohttp", "aiohappyeyeballs")


def aiohttp_session(tls: bool, client_context: ssl.SSLContext, limit: int = 100) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=client_context if tls else True, limit=limit)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT))


@TLS
def test_aiohttp_session_counts_gets_and_a_post_on_its_keepalive_connection(
    peer: PeerFactory, client_context: ssl.SSLContext, tls: bool
) -> None:
    http = peer("http", tls=tls)

    async def main() -> None:
        async with aiohttp_session(tls, client_context, limit=1) as session:
            for size in SIZES:
                async with session.get(http_url(http, tls, f"/bytes/{size}")) as response:
                    assert len(await response.read()) == size
            async with session.post(http_url(http, tls, "/upload"), data=b"u" * UPLOAD) as response:
                assert await response.read() == b"ok"

    with netstats.capture() as cap:
        asyncio.run(main())
    (conn,) = assert_matches_peer(cap, http, 1, tls=tls, origin=AIOHTTP_ORIGIN)
    assert conn.rx > sum(SIZES)
    assert conn.tx > UPLOAD


@TLS
def test_aiohttp_concurrent_requests_each_count_what_the_peer_counted_on_that_connection(
    peer: PeerFactory, client_context: ssl.SSLContext, tls: bool
) -> None:
    http = peer("http", tls=tls)
    sizes = (10, 20_000, 300_000, 1_048_576)  # distinct, so each connection's figures differ

    async def fetch(session: aiohttp.ClientSession, size: int) -> int:
        async with session.get(http_url(http, tls, f"/bytes/{size}")) as response:
            return len(await response.read())

    async def main() -> None:
        async with aiohttp_session(tls, client_context) as session:
            assert await asyncio.gather(*(fetch(session, size) for size in sizes)) == list(sizes)

    with netstats.capture() as cap:
        asyncio.run(main())
    assert_matches_peer(cap, http, len(sizes), tls=tls, origin=AIOHTTP_ORIGIN, ordered=False)


# ---- redis-py ---------------------------------------------------------------------------
# protocol=2: redis-py 8 defaults to RESP3 and opens with HELLO 3, which the "resp" peer (a
# RESP2 server, like Redis before 6) refuses; with RESP2 it sends CLIENT SETINFO, answered +OK.

VALUE = b"v" * 100_000


def redis_options(tls: bool, ca_file: str) -> dict[str, Any]:
    options: dict[str, Any] = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT, "protocol": 2}
    if tls:
        options.update(ssl=True, ssl_ca_certs=ca_file)
    return options


@TLS
def test_redis_client_counts_commands_and_replies_as_the_peer_did(
    peer: PeerFactory, ca_file: str, tls: bool
) -> None:
    resp = peer("resp", tls=tls)
    with netstats.capture() as cap:
        with redis.Redis(host="localhost", port=resp.port, **redis_options(tls, ca_file)) as client:
            assert client.ping() is True
            assert client.set("key", VALUE) is True
            assert client.get("key") == VALUE
            assert client.echo("hello") == b"hello"
            assert client.delete("key") == 1
            assert client.get("key") is None
    (conn,) = assert_matches_peer(cap, resp, 1, tls=tls, origin=("redis",))
    assert conn.tx > len(VALUE) and conn.rx > len(VALUE)


@TLS
def test_redis_asyncio_client_counts_commands_and_replies_as_the_peer_did(
    peer: PeerFactory, ca_file: str, tls: bool
) -> None:
    resp = peer("resp", tls=tls)

    async def main() -> None:
        async with redis.asyncio.Redis(
            host="localhost", port=resp.port, **redis_options(tls, ca_file)
        ) as client:
            assert await client.ping() is True
            assert await client.set("key", VALUE) is True
            assert await client.get("key") == VALUE
            assert await client.echo("hello") == b"hello"
            assert await client.delete("key") == 1
            assert await client.get("key") is None

    with netstats.capture() as cap:
        asyncio.run(main())
    (conn,) = assert_matches_peer(cap, resp, 1, tls=tls, origin=("redis",))
    assert conn.tx > len(VALUE) and conn.rx > len(VALUE)


# ---- websockets -------------------------------------------------------------------------
# A websockets echo server in its own process, behind a counting relay (which terminates TLS
# when given the certificate): the relay's counts are the expected figures.

MESSAGES: tuple[str | bytes, ...] = ("hello", b"\x00\x01" * 5_000, "é" * 70_000, b"x" * 500_000)


def websocket_via_relay(peer: PeerFactory, tls: bool) -> tuple[Peer, str]:
    server = peer("websocket")
    relay = peer("relay", tls=tls, backend=("127.0.0.1", server.port))
    return relay, f"{'wss' if tls else 'ws'}://localhost:{relay.port}/"


WS_OPTIONS: dict[str, Any] = {"open_timeout": TIMEOUT, "close_timeout": 1, "proxy": None}


@TLS
def test_websockets_asyncio_client_counts_frames_as_the_relay_saw_them(
    peer: PeerFactory, client_context: ssl.SSLContext, tls: bool
) -> None:
    relay, uri = websocket_via_relay(peer, tls)

    async def main() -> None:
        ssl_option = {"ssl": client_context} if tls else {}
        async with websockets.asyncio.client.connect(uri, **WS_OPTIONS, **ssl_option) as ws:
            for message in MESSAGES:
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == message

    with netstats.capture() as cap:
        asyncio.run(main())
    assert_matches_peer(cap, relay, 1, tls=tls, origin=("websockets",))


@TLS
def test_websockets_sync_client_counts_frames_as_the_relay_saw_them(
    peer: PeerFactory, client_context: ssl.SSLContext, tls: bool
) -> None:
    relay, uri = websocket_via_relay(peer, tls)
    ssl_option = {"ssl": client_context} if tls else {}
    with netstats.capture() as cap:
        with websockets.sync.client.connect(uri, **WS_OPTIONS, **ssl_option) as ws:
            for message in MESSAGES:
                ws.send(message)
                assert ws.recv(timeout=TIMEOUT) == message
    assert_matches_peer(cap, relay, 1, tls=tls, origin=("websockets",))
