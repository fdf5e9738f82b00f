"""The kernel census: connections made by C code (grpcio, libzmq) or by a stock socket netstats
never wrapped (the C drivers that tell netstats of their connections: test_drivers.py). Every
expected count comes from a counting relay in front of the real server, or from the server's own
count; the census's figures are wire bytes (source "kernel"), and the application's bytes are
None — never 0.
"""

from __future__ import annotations

import _socket
import functools
import socket
import subprocess
import sys
import time
from typing import Any

import helpers
import pytest

import netstats
from netstats._sources import census

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.skipif(not census.supported, reason="the kernel census needs Linux")

FOUND_WITHIN = 2.0  # seconds: a sweep is every census.INTERVAL; generous for a loaded machine
wait_for = functools.partial(helpers.wait_for, timeout=FOUND_WITHIN * 5)


def kernel_connections(cap: netstats.Capture) -> list[netstats.Connection]:
    return [c for c in cap.connections if c.source == "kernel"]


def found_one(cap: netstats.Capture, port: int | None = None, **match: Any) -> netstats.Connection:
    """The found connection with these fields (and this remote port: C code may use IPv6 sockets
    with IPv4-mapped addresses, so the address is not compared)."""

    def look() -> netstats.Connection | None:
        for conn in kernel_connections(cap):
            if port is not None and (not isinstance(conn.remote, tuple) or conn.remote[1] != port):
                continue
            if all(getattr(conn, k) == v for k, v in match.items()):
                return conn
        return None

    return wait_for(look)  # type: ignore[no-any-return]


def assert_unknown_application_bytes(conn: netstats.Connection) -> None:
    """What a found connection cannot know is None, never 0: in the record and in as_dict()."""
    record = conn.as_dict()
    assert (conn.tx, conn.rx, conn.tls, conn.reads, conn.writes) == (None,) * 5
    assert (record["tx"], record["rx"], record["source"]) == (None, None, "kernel")


# ---- a stock socket: the census without any third-party code ------------------------------


def test_a_stock_socket_made_during_a_capture_is_found_with_exact_wire_bytes(peer):
    echo = peer("echo")
    with netstats.capture() as cap:
        raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)  # the C type: no wrappers
        raw.connect(echo.address)
        raw.sendall(b"x" * 3000)
        got = 0
        while got < 3000:
            got += len(raw.recv(65536))
        conn = found_one(cap)
        live = wait_for(lambda: echo.counts()[0]["tx"] == 3000 and conn.wire_rx == 3000 and conn)
        assert (live.wire_tx, live.wire_rx, live.side) == (3000, 3000, "client")
        assert live.remote == echo.address and live.closed is None
        assert_unknown_application_bytes(live)
        raw.sendall(b"y" * 500)
        wait_for(lambda: echo.counts()[0]["rx"] == 3500)
        raw.close()
        wait_for(lambda: conn.closed is not None)
        (record,) = echo.wait_closed(1)
        assert (conn.wire_tx, conn.wire_rx) == (record["rx"], record["tx"]) == (3500, 3500)
    assert cap.tx is None and cap.rx is None and cap.unknown == 1  # a sum with an unknown part


def test_python_sockets_are_never_found_again_in_either_counting_mode(peer):
    """The census skips what netstats counts itself: kernel-counted and wrapped alike."""
    echo = peer("echo")
    for callback in (None, lambda event, conn, n: None):
        with netstats.capture(callback) as cap:
            with socket.create_connection(echo.address) as s:
                s.sendall(b"x" * 100)
                s.recv(100)
                time.sleep(census.INTERVAL * 4)  # several sweeps while it is open
        assert [c.source for c in cap.connections] == ["python"]
        assert (cap.tx, cap.rx) == (100, 100)


def test_sockets_open_before_the_capture_are_not_found(peer):
    echo = peer("echo")
    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    raw.connect(echo.address)
    try:
        with netstats.capture() as cap:
            raw.sendall(b"x" * 10)
            time.sleep(census.INTERVAL * 4)
        assert cap.connections == []
    finally:
        raw.close()


def test_an_accepted_stock_socket_is_found_only_with_servers_true():
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        for servers in (False, True):
            with netstats.capture(servers=servers) as cap:
                client = socket.create_connection(("127.0.0.1", port))  # counted by Python
                fd, _addr = listener._accept()  # the C accept: a descriptor Python never wrapped
                accepted = _socket.socket(fileno=fd)
                client.sendall(b"q" * 700)
                accepted.recv(1000)
                if servers:
                    conn = found_one(cap, side="server")
                    assert conn.local[1] == port and conn.wire_rx == 700
                else:
                    time.sleep(census.INTERVAL * 4)
                accepted.close()
                client.close()
            sides = sorted((c.source, c.side) for c in cap.connections)
            expected = sorted([("python", "client")] + ([("kernel", "server")] if servers else []))
            assert sides == expected
    finally:
        listener.close()


# ---- what a sweep costs (issue 27) --------------------------------------------------------


def _raw_connection(address: Any, nbytes: int) -> Any:
    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)  # the C type: no wrappers
    raw.connect(address)
    raw.sendall(b"x" * nbytes)
    got = 0
    while got < nbytes:
        got += len(raw.recv(65536))
    return raw


def test_a_connection_opened_on_the_number_of_one_just_closed_is_found_and_the_first_ends(peer):
    """A number closed and taken again between two sweeps (the count of descriptors unchanged):
    the census still sees the new socket, and the old connection's end."""
    echo = peer("echo")
    with netstats.capture() as cap:
        first = _raw_connection(echo.address, 1000)
        old = found_one(cap, wire_tx=1000)
        number = first.fileno()
        with census.census._lock:  # (no sweep between the close and the new connection)
            first.close()
            second = _raw_connection(echo.address, 2500)
        assert second.fileno() == number
        new = found_one(cap, wire_tx=2500)
        wait_for(lambda: old.closed is not None)
        second.close()
        wait_for(lambda: new.closed is not None)
    records = echo.wait_closed(2)
    assert sorted((c.wire_tx, c.wire_rx) for c in (old, new)) == sorted((r["rx"], r["tx"]) for r in records)


def test_idle_descriptors_cost_a_sweep_nothing_while_the_table_is_unchanged(monkeypatch):
    """With the table as it was (the same count of descriptors, no TCP connection opened), a
    sweep looks at the sockets it watches only: no fstat for each idle descriptor."""
    idle = [_socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) for _ in range(200)]
    try:
        with netstats.capture():
            c = census.census
            with c._lock:  # (the thread's sweeps wait)
                monkeypatch.setattr(census, "_hint", lambda: (1, b"as it was"))
                c._hint, c._next_full = None, 0.0
                c._tick()  # a full sweep: the table may have changed since the last
                fstat, calls = census.os.fstat, []
                monkeypatch.setattr(census.os, "fstat", lambda fd: calls.append(fd) or fstat(fd))
                c._tick()
                monkeypatch.setattr(census.os, "fstat", fstat)
            assert not set(calls) & {s.fileno() for s in idle}
    finally:
        for s in idle:
            s.close()


def test_a_connection_a_full_sweep_saw_is_recorded_by_the_next_sweep_of_the_watched_ones(peer, monkeypatch):
    echo = peer("echo")
    with netstats.capture() as cap:
        c = census.census
        with c._lock:
            raw = _raw_connection(echo.address, 700)
            c.sweep()  # its first sweep
            assert kernel_connections(cap) == []
            time.sleep(census.INTERVAL)
            c._look_again()  # its second: by its number alone
            (conn,) = kernel_connections(cap)
        assert (conn.wire_tx, conn.closed) == (700, None)
        raw.close()
        wait_for(lambda: conn.closed is not None)


# ---- grpcio: client and server in C --------------------------------------------------------


def test_grpc_client_and_server_connections_are_found_with_servers_true(peer):
    grpc = pytest.importorskip("grpc")
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request * 2)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", {"Twice": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    relay = peer("relay", backend=("127.0.0.1", port))
    try:
        with netstats.capture(servers=True) as cap:
            channel = grpc.insecure_channel(f"127.0.0.1:{relay.port}")
            twice = channel.unary_unary("/echo.Echo/Twice")
            for size in (1000, 50000):
                assert twice(b"z" * size, timeout=30) == b"z" * (2 * size)
            client = found_one(cap, side="client", port=relay.port)
            accepted = found_one(cap, side="server")
            assert accepted.local[1] == port
            wait_for(
                lambda: (client.wire_tx, client.wire_rx) == (relay.counts()[0]["rx"], relay.counts()[0]["tx"])
            )
            assert client.wire_tx > 51000 and client.wire_rx > 102000
            assert_unknown_application_bytes(client)
            assert_unknown_application_bytes(accepted)
            channel.close()
            wait_for(lambda: client.closed is not None and accepted.closed is not None)
        (record,) = relay.wait_closed(1)
        assert (client.wire_tx, client.wire_rx) == (record["rx"], record["tx"])
        # The server's side of the relay's own connection: what it read is what the relay sent.
        assert accepted.wire_rx == record["rx"] and accepted.wire_tx == record["tx"]
    finally:
        server.stop(None)


# ---- every surface says it does not know ---------------------------------------------------


def test_reports_show_unknown_application_bytes_as_question_marks(peer, tmp_path):
    echo = peer("echo")
    script = tmp_path / "c_socket.py"
    script.write_text(
        "import _socket, time\n"
        "s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
        f"s.connect(('127.0.0.1', {echo.port}))\n"
        "s.sendall(b'x' * 1234)\n"
        "n = 0\n"
        "while n < 1234:\n"
        "    n += len(s.recv(65536))\n"
        "time.sleep(1.0)\n"
        "s.close()\n"
    )
    netstats_cli = [sys.executable, "-m", "netstats", "run"]
    out = subprocess.run(
        [*netstats_cli, "--format", "json", "-o", "-", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    import json

    run = json.loads(out.stdout[out.stdout.index("{") :])
    (conn,) = run["connections"]
    assert (conn["source"], conn["tx"], conn["rx"], conn["wire_tx"], conn["wire_rx"]) == (
        "kernel",
        None,
        None,
        1234,
        1234,
    )
    text = subprocess.run([*netstats_cli, str(script)], capture_output=True, text=True, timeout=60).stderr
    assert "?" in text and "1.2 KiB" in text


def test_exporters_count_found_connections_in_the_wire_metrics_only(peer):
    from prometheus_client import CollectorRegistry, generate_latest

    from netstats.export import prometheus

    echo = peer("echo")
    registry = CollectorRegistry()
    with netstats.capture(keep=False) as cap:
        prometheus.register(cap, registry)
        raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        raw.connect(echo.address)
        raw.sendall(b"x" * 4321)
        found_one(cap)
        raw.close()
        (record,) = echo.wait_closed(1)
        time.sleep(census.INTERVAL * 3)
        text = generate_latest(registry).decode()
    wire_tx = [
        line
        for line in text.splitlines()
        if line.startswith("netstats_wire_bytes_total") and 'direction="tx"' in line
    ]
    app_tx = [
        line
        for line in text.splitlines()
        if line.startswith("netstats_bytes_total") and 'direction="tx"' in line
    ]
    assert record["rx"] == 4321
    assert [float(line.rsplit(" ", 1)[1]) for line in wire_tx] == [4321.0]
    assert [float(line.rsplit(" ", 1)[1]) for line in app_tx] == [0.0]


def test_a_budget_is_checked_against_wire_bytes_where_application_bytes_are_unknown(pytester, peer):
    echo = peer("echo")
    pytester.makepyfile(
        f"""
        import _socket, time, pytest

        def talk(n):
            s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            s.connect(("127.0.0.1", {echo.port}))
            s.sendall(b"x" * n)
            got = 0
            while got < n:
                got += len(s.recv(65536))
            time.sleep(0.6)
            s.close()
            time.sleep(0.3)

        @pytest.mark.netstats(max_tx=2000)
        def test_small():
            talk(1000)

        @pytest.mark.netstats(max_tx=2000)
        def test_big():
            talk(5000)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--netstats")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*tx 0 bytes + up to 5,000 not known > max_tx=2,000*", "*+?*"])


# ---- libzmq ---------------------------------------------------------------------------------


def test_pyzmq_connections_are_found_against_a_counting_relay(peer):
    """libzmq's own threads connect and move the bytes, through a relay that counts them."""
    zmq = pytest.importorskip("zmq")
    context = zmq.Context()
    server = context.socket(zmq.PAIR)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    relay = peer("relay", backend=("127.0.0.1", port))
    try:
        with netstats.capture(servers=True) as cap:
            client = context.socket(zmq.PAIR)
            client.connect(f"tcp://127.0.0.1:{relay.port}")
            for size in (100, 5000, 70000):
                client.send(b"m" * size)
                assert server.recv() == b"m" * size
            server.send(b"r" * 3000)
            assert client.recv() == b"r" * 3000
            out = found_one(cap, side="client", port=relay.port)
            inside = found_one(cap, side="server")
            assert inside.local[1] == port
            assert_unknown_application_bytes(out)

            def agree() -> bool:
                (record,) = relay.counts()
                return (
                    (out.wire_tx, out.wire_rx)
                    == (record["rx"], record["tx"])
                    == (
                        inside.wire_rx,
                        inside.wire_tx,
                    )
                )

            wait_for(agree)  # what the relay read from the client it wrote to the server, and back
            assert out.wire_tx > 75100 and out.wire_rx > 3000  # the payloads and ZMTP's framing
            client.close(linger=0)
            wait_for(lambda: out.closed is not None and inside.closed is not None)
        (record,) = relay.wait_closed(1)
        assert (out.wire_tx, out.wire_rx) == (record["rx"], record["tx"])
    finally:
        server.close(linger=0)
        context.term()
