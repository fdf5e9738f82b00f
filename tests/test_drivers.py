"""C drivers told of at the call that connects (src/netstats/_sources/drivers.py): psycopg2,
psycopg 3, mysqlclient (MySQLdb), pycurl and grpc. A Django-shaped loop (connect, one query,
close: a few milliseconds each, far shorter than the census's sweeps) has every connection in
the report, with where it was made, the name asked for and exact figures. Every expected figure
comes from a counting relay in front of a real server started by the tests (tests/peers.py) or
from the server's own count: never from netstats.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import helpers
import pytest
import trustme
from helpers import MODES, capture_in

import netstats
from netstats._sources import census

pytestmark = pytest.mark.skipif(
    not census.supported, reason="drivers are followed by the kernel census (Linux)"
)

LOOPS = 50
wait_for = functools.partial(helpers.wait_for, timeout=10.0)
# TLS: the server's close_notify (one TLS 1.3 alert record, 24 bytes) may reach our socket after
# the driver closed it: the relay wrote it, our socket never received it (its kernel answered
# with a reset). Whether the peer's FIN counted is then not known either: 1 byte either way
# (README, "What is not captured").
CLOSE_NOTIFY, FIN = 24, 1
GOAWAY = 17  # HTTP/2's answer to a grpc channel's close: a frame header (9 bytes) and 8 more


def settled(cap: netstats.Capture, n: int) -> list[netstats.Connection]:
    """The capture's n connections, once every one has ended (the census hears of each end)."""
    wait_for(lambda: len(cap.connections) >= n and all(c.closed is not None for c in cap.connections))
    return cap.connections


def assert_like_the_relay(
    conns: list[netstats.Connection], records: list[dict[str, Any]], answered: bool = False, **expected: Any
) -> None:
    """Each connection against the relay's own count of it (in order: one at a time), made here.
    `answered`: the server answers the client's close (GOAWAY), which the client's socket may
    receive before it closes (and then not read) or not."""
    assert len(conns) == len(records)
    for conn, record in zip(conns, records, strict=True):
        assert conn.caller is not None and conn.caller.startswith(__file__), conn.caller
        assert conn.origin is not None and conn.error is None
        assert (conn.side, conn.transport) == ("client", "tcp")
        assert {k: getattr(conn, k) for k in expected} == expected
        assert conn.wire_tx == record["rx"]  # what the relay read from us
        if conn.tls is None and conn.source == "python":  # plain: the stream is the application's
            if answered:  # (one that came before the close is there, unread)
                assert record["tx"] - GOAWAY - FIN <= conn.rx <= conn.wire_rx <= record["tx"]
            else:
                assert conn.rx == conn.wire_rx == record["tx"]
            assert (conn.tx, conn.reads, conn.writes) == (record["rx"], None, None)
        else:
            assert record["tx"] - CLOSE_NOTIFY - FIN <= conn.wire_rx <= record["tx"] + FIN
            assert (conn.tx, conn.rx, conn.as_dict()["rx"]) == (None, None, None)  # unknown, never 0


# ---- PostgreSQL (libpq): psycopg2 and psycopg 3 ------------------------------------------------


def _connect(driver: str, port: int, sslmode: str) -> Any:
    module = pytest.importorskip(driver)
    return module.connect(host="localhost", port=port, user="netstats", dbname="postgres", sslmode=sslmode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_each_of_50_django_shaped_postgres_connections_is_recorded_exactly(
    peer, postgres, driver, sslmode, mode
):
    relay = peer("relay", backend=("127.0.0.1", postgres))
    events: list[tuple[str, int | None]] = []
    with capture_in(mode, events) as cap:
        for _ in range(LOOPS):  # Django's CONN_MAX_AGE=0: a connection per request
            db = _connect(driver, relay.port, sslmode)
            cur = db.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            db.close()
        conns = settled(cap, LOOPS)
    plain = sslmode == "disable"
    tls = None if plain else ("TLSv1.3" if driver == "psycopg2" else "TLS")  # (psycopg 3 gives no version)
    source = "python" if plain else "kernel"
    assert_like_the_relay(conns, relay.wait_closed(LOOPS), host="localhost", tls=tls, source=source)
    assert collections.Counter(e for e, _ in events) == {"open": LOOPS, "connect": LOOPS, "close": LOOPS}
    if plain:
        assert (cap.tx, cap.rx) == (sum(c.tx for c in conns), sum(c.rx for c in conns))
    else:
        assert cap.tx is None and cap.unknown == LOOPS


def test_psycopg_async_connections_are_recorded_exactly(peer, postgres):
    psycopg = pytest.importorskip("psycopg")
    relay = peer("relay", backend=("127.0.0.1", postgres))

    async def requests() -> None:
        for _ in range(10):
            db = await psycopg.AsyncConnection.connect(
                host="localhost", port=relay.port, user="netstats", dbname="postgres", sslmode="disable"
            )
            cur = await db.execute("SELECT repeat('x', 5000)")
            assert len((await cur.fetchone())[0]) == 5000
            await db.close()

    with netstats.capture() as cap:
        asyncio.run(requests())
        conns = settled(cap, 10)
    assert_like_the_relay(conns, relay.wait_closed(10), host="localhost", tls=None, source="python")
    assert all(c.rx > 5000 for c in conns)


@pytest.mark.parametrize("sslmode", ["disable", "require"])
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_postgres_connection_held_across_sweeps_is_one_record_live_then_final(
    peer, postgres, driver, sslmode
):
    relay = peer("relay", backend=("127.0.0.1", postgres))
    with netstats.capture() as cap:
        db = _connect(driver, relay.port, sslmode)
        cur = db.cursor()
        cur.execute("SELECT repeat('x', 20000)")
        assert len(cur.fetchone()[0]) == 20000
        db.commit()
        (conn,) = cap.connections

        def agree() -> bool:
            (record,) = relay.counts()
            return (conn.wire_tx, conn.wire_rx) == (record["rx"], record["tx"])

        wait_for(agree)  # live: what the relay read from us and wrote to us
        time.sleep(census.INTERVAL * 4)  # swept several times: never recorded a second time
        assert conn.closed is None and conn.wire_rx > 20000
        if sslmode == "disable":
            assert (conn.tx, conn.rx) == (conn.wire_tx, conn.wire_rx)
        db.close()
        settled(cap, 1)
    assert len(cap.connections) == 1
    tls = None if sslmode == "disable" else conn.tls
    assert_like_the_relay(cap.connections, relay.wait_closed(1), host="localhost", tls=tls)
    assert tls is None or tls.startswith("TLS")


def test_a_driver_imported_during_the_run_is_told_of_with_the_programs_own_frames(peer, postgres, tmp_path):
    """`netstats run` starts its capture before the program imports psycopg2 (patched then)."""
    relay = peer("relay", backend=("127.0.0.1", postgres))
    script = tmp_path / "django_like.py"
    script.write_text(
        "import psycopg2\n"
        "for _ in range(5):\n"
        f"    db = psycopg2.connect(host='localhost', port={relay.port}, user='netstats', dbname='postgres',"
        " sslmode='disable')\n"
        "    db.cursor().execute('SELECT 1')\n"
        "    db.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "netstats", "run", "--format", "json", "-o", "-", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    conns = json.loads(out.stdout[out.stdout.index("{") :])["connections"]
    records = relay.wait_closed(5)
    assert [(c["source"], c["host"], c["tx"], c["rx"], c["wire_tx"], c["wire_rx"]) for c in conns] == [
        ("python", "localhost", r["rx"], r["tx"], r["rx"], r["tx"]) for r in records
    ]
    assert all(c["caller"] == f"{script}:3 in <module>" for c in conns)


# ---- MariaDB (libmariadb): mysqlclient ---------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb(ca: trustme.CA) -> Iterator[int]:
    """A MariaDB server of the test's own on 127.0.0.1 (TLS offered, no grant tables); its port."""
    server, install = shutil.which("mariadbd", path="/usr/sbin:/usr/bin"), shutil.which("mariadb-install-db")
    if server is None or install is None:
        if os.environ.get("CI"):
            pytest.fail("MariaDB is not installed: .ci/run installs mariadb-server")
        pytest.skip("MariaDB server not installed (Debian 'mariadb-server'; CI installs it)")
    base = tempfile.mkdtemp(prefix="netstats-mariadb-")
    as_root = ["--user=root"] if os.geteuid() == 0 else []  # (it refuses root unless told)
    data = os.path.join(base, "data")
    subprocess.run(
        [install, "--no-defaults", f"--datadir={data}", "--skip-test-db", *as_root],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(os.path.join(base, "cert.pem"))
    cert.private_key_pem.write_to_path(os.path.join(base, "key.pem"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            server, "--no-defaults", f"--datadir={data}", f"--socket={base}/sock", f"--port={port}",
            "--bind-address=127.0.0.1", "--skip-grant-tables", f"--pid-file={base}/pid",
            f"--log-error={base}/log", f"--ssl-cert={base}/cert.pem", f"--ssl-key={base}/key.pem",
            "--innodb-buffer-pool-size=16M", *as_root,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip

    def ready() -> bool:
        if process.poll() is not None:
            with open(f"{base}/log", encoding="utf-8", errors="replace") as log:
                raise AssertionError(f"mariadbd exited: {log.read()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        helpers.wait_for(ready, timeout=60)
        yield port
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_each_of_50_django_shaped_mysqlclient_connections_is_recorded_exactly(peer, mariadb, ca_file, tls):
    MySQLdb = pytest.importorskip("MySQLdb")
    relay = peer("relay", backend=("127.0.0.1", mariadb))
    # "LocalHost": a name for 127.0.0.1 that libmariadb does not take for its Unix socket.
    options = {"ssl": {"ca": ca_file}} if tls else {"ssl_mode": "DISABLED"}
    with netstats.capture() as cap:
        for _ in range(LOOPS):
            db = MySQLdb.connect(host="LocalHost", port=relay.port, user="root", **options)
            cur = db.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            db.close()
        conns = settled(cap, LOOPS)
    # MySQLdb does not say whether TLS was negotiated: with TLS offered and asked for, not known.
    source = "kernel" if tls else "python"
    assert_like_the_relay(conns, relay.wait_closed(LOOPS), host="LocalHost", tls=None, source=source)


# ---- libcurl: pycurl ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pycurl_transfers_whose_connection_ends_inside_perform_are_each_recorded(peer, mode):
    """HTTP/1.0's shape: the server closes after each response, libcurl closes inside perform()."""
    pycurl = pytest.importorskip("pycurl")
    http = peer("http")
    sizes = [1000 + i for i in range(LOOPS)]
    with capture_in(mode) as cap:
        for size in sizes:
            curl = pycurl.Curl()
            sink = bytearray()
            curl.setopt(pycurl.URL, f"http://localhost:{http.port}/bytes/{size}")
            curl.setopt(pycurl.HTTPHEADER, ["Connection: close"])
            curl.setopt(pycurl.WRITEFUNCTION, sink.extend)
            curl.perform()
            assert len(sink) == size
            curl.close()
        conns = settled(cap, LOOPS)
    assert_like_the_relay(conns, http.wait_closed(LOOPS), host="localhost", tls=None, source="python")
    assert all(c.rx > size for c, size in zip(conns, sizes, strict=True))


def test_a_kept_pycurl_connection_is_one_record_until_the_handle_closes(peer):
    pycurl = pytest.importorskip("pycurl")
    http = peer("http")
    with netstats.capture() as cap:
        curl = pycurl.Curl()
        curl.setopt(pycurl.WRITEFUNCTION, lambda data: None)
        for size in (100, 20000, 300):
            curl.setopt(pycurl.URL, f"http://localhost:{http.port}/bytes/{size}")
            curl.perform()
        (conn,) = cap.connections
        assert conn.closed is None
        curl.close()
        settled(cap, 1)
    assert_like_the_relay(cap.connections, http.wait_closed(1), host="localhost", source="python")


# ---- grpc --------------------------------------------------------------------------------------


def test_short_grpc_channels_are_each_recorded_at_their_close(peer):
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request * 2)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", {"Twice": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    relay = peer("relay", backend=("127.0.0.1", port))
    try:
        with netstats.capture() as cap:
            for _ in range(10):
                # (a channel's own connection: grpc shares them between channels to one target else)
                options = [("grpc.use_local_subchannel_pool", 1)]
                with grpc.insecure_channel(f"localhost:{relay.port}", options) as channel:
                    assert channel.unary_unary("/echo.Echo/Twice")(b"z" * 500, timeout=30) == b"z" * 1000
            conns = settled(cap, 10)
        # The server answers the channel's close (HTTP/2's GOAWAY): the relay writes that answer
        # whether or not the client's socket is still there to receive it.
        records = relay.wait_closed(10)
        assert_like_the_relay(conns, records, answered=True, host="localhost", tls=None, source="python")
    finally:
        server.stop(None)


# ---- what a report says of C code no adapter knows ---------------------------------------------


def test_a_run_with_connections_of_unknown_c_code_says_short_ones_may_be_missing(peer, tmp_path):
    echo = peer("echo")
    script = tmp_path / "c_socket.py"
    script.write_text(
        "import _socket, time\n"
        "s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
        f"s.connect(('127.0.0.1', {echo.port}))\n"
        "s.sendall(b'x' * 100)\n"
        "time.sleep(0.6)\n"
        "s.close()\n"
    )
    told = tmp_path / "told.py"
    told.write_text(f"import socket\nsocket.create_connection(('127.0.0.1', {echo.port})).close()\n")
    netstats_run = [sys.executable, "-m", "netstats", "run"]
    text = subprocess.run([*netstats_run, str(script)], capture_output=True, text=True, timeout=60).stderr
    assert "1 connection made by C code netstats has no adapter for" in text
    text = subprocess.run([*netstats_run, str(told)], capture_output=True, text=True, timeout=60).stderr
    assert "C code" not in text and "1 connection" in text
