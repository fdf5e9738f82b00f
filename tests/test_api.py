"""The public API as a contract: stats, reset, mark, register, captures, callbacks, errors."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from helpers import drain, roundtrip

import netstats


def test_stats_gives_every_field_or_the_one_named(peer):
    echo = peer("echo")
    with netstats.capture(), socket.create_connection(echo.address) as s:
        roundtrip(s, 42)
        everything = netstats.stats(s)
        assert set(everything) == set(netstats.FIELDS)
        assert (everything["tx"], everything["rx"]) == (42, 42)
        assert netstats.stats(s, "tx") == 42
        assert netstats.stats(s, "remote") == echo.address
        assert netstats.stats(s, "opened") == everything["opened"]
        with pytest.raises(ValueError, match="valid: id, pid"):
            netstats.stats(s, "bytes")


def test_stats_of_anything_else_raises_not_captured_naming_it():
    with pytest.raises(netstats.NotCaptured, match="'sock7'"):
        netstats.stats("sock7")
    with socket.socket() as stock, pytest.raises(LookupError, match="socket"):
        netstats.stats(stock)
    with pytest.raises(netstats.NotCaptured):
        netstats.mark(object())
    with pytest.raises(netstats.NotCaptured):
        netstats.reset(None)


def test_everything_stays_readable_after_close(peer):
    echo = peer("echo")
    with netstats.capture():
        s = socket.create_connection(echo.address)
        roundtrip(s, 9)
        s.close()
    assert netstats.stats(s, "tx") == 9
    assert netstats.stats(s, "closed") is not None
    assert netstats.stats(s)["duration"] >= 0


def test_mark_returns_deltas_since_open_then_since_the_previous_mark(peer):
    echo = peer("echo")
    with netstats.capture(), socket.create_connection(echo.address) as s:
        roundtrip(s, 100)
        first = netstats.mark(s, "one")
        roundtrip(s, 30)
        second = netstats.mark(s, "two")
        third = netstats.mark(s)
    assert (first["tx"], first["rx"]) == (100, 100)  # seed bug 3: its first mark was always 0
    assert (second["tx"], second["rx"]) == (30, 30)
    assert (third["tx"], third["rx"]) == (0, 0)
    assert first["elapsed"] >= 0 and second["elapsed"] >= 0
    marks = netstats.stats(s, "marks")
    assert [m["name"] for m in marks] == ["one", "two", ""]
    assert marks[1]["tx"] == 30


def test_reset_zeroes_counts_and_marks_and_full_restarts_opened(peer):
    echo = peer("echo")
    with netstats.capture() as cap, socket.create_connection(echo.address) as s:
        roundtrip(s, 50)
        netstats.mark(s, "m")
        opened = netstats.stats(s, "opened")
        netstats.reset(s)
        assert (netstats.stats(s, "tx"), netstats.stats(s, "rx"), netstats.stats(s, "marks")) == (0, 0, [])
        assert netstats.stats(s, "opened") == opened
        roundtrip(s, 5)
        assert netstats.mark(s) == pytest.approx({"tx": 5, "rx": 5, "elapsed": 0}, abs=1)
        time.sleep(0.01)
        netstats.reset(s, full=True)
        assert netstats.stats(s, "opened") > opened
    assert (cap.tx, cap.rx) == (55, 55)  # capture totals do not go backwards


def test_register_adopts_an_existing_socket_once(peer):
    echo = peer("echo")
    events: list[str] = []
    s = socket.create_connection(echo.address)
    roundtrip(s, 3)
    conn = netstats.register(s, lambda e, c, n: events.append(e))
    again = netstats.register(s)
    assert again is conn
    s.send(b"1")  # seed bug 8: a second register stacked a second counter
    drain(s, 1)
    s.close()
    assert (conn.tx, conn.rx) == (1, 1)
    assert events == ["open", "write", "read", "close"]  # seed bug 2: open fired twice
    assert conn.remote == echo.address and conn.connected is not None
    assert isinstance(s, socket.socket)


def test_register_refuses_what_is_not_a_socket():
    with pytest.raises(TypeError, match="socket.socket"):
        netstats.register("not a socket")
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        netstats.register(s)


def test_connection_ids_are_never_reused(peer):
    echo = peer("echo")
    with netstats.capture() as cap:
        for _ in range(5):
            with socket.create_connection(echo.address) as s:
                roundtrip(s, 1)
    ids = [c.id for c in cap.connections]
    assert len(set(ids)) == 5 and ids == sorted(ids)  # seed bug 9: names were reused


def test_half_close_works_and_counts(peer):
    echo = peer("echo")
    with netstats.capture() as cap, socket.create_connection(echo.address) as s:
        s.sendall(b"h" * 1000)
        s.shutdown(socket.SHUT_WR)  # seed bug 10: half-close failed under the transform
        got = 0
        while chunk := s.recv(4096):
            got += len(chunk)
    assert got == 1000
    assert echo.totals(1) == (1000, 1000) == (cap.connections[0].tx, cap.connections[0].rx)


def test_a_short_reply_does_not_hang_a_blocking_read(peer):
    echo = peer("echo")
    with netstats.capture(), socket.create_connection(echo.address) as s:
        s.settimeout(5)
        f = s.makefile("rb")
        for _ in range(200):  # seed bug 1: a read waited for a full buffer
            s.sendall(b"ping\n")
            assert f.readline() == b"ping\n"
            s.sendall(b"x" * 64)
            got = len(s.recv(65536))
            assert 0 < got <= 64
            if got < 64:
                drain(s, 64 - got)
        f.close()


def test_two_captures_with_their_own_callbacks_both_hear(peer):
    echo = peer("echo")
    outer: list[str] = []
    inner: list[str] = []
    with netstats.capture(lambda e, c, n: outer.append(e)) as a:
        with netstats.capture(lambda e, c, n: inner.append(e)) as b:  # seed bug 7: ignored
            with socket.create_connection(echo.address) as s:
                roundtrip(s, 10)
        with socket.create_connection(echo.address) as s:
            roundtrip(s, 20)
    assert inner == ["open", "connect", "write", "read", "close"]
    assert outer == inner * 2
    assert (a.count, b.count) == (2, 1)
    assert (a.tx, b.tx) == (30, 10)


def test_events_filter_and_read_write_sums_equal_the_counts(peer):
    echo = peer("echo")
    seen: list[tuple[str, int | None]] = []
    with netstats.capture(lambda e, c, n: seen.append((e, n)), events={"read", "close"}) as cap:
        with socket.create_connection(echo.address) as s:
            roundtrip(s, 70_000)
    assert {e for e, _ in seen} == {"read", "close"}
    assert sum(n for e, n in seen if e == "read") == cap.rx == 70_000
    with pytest.raises(ValueError, match="unknown event"):
        netstats.capture(events={"recv"})
    with pytest.raises(TypeError):
        netstats.capture(callback=42)


def test_a_raising_callback_never_reaches_the_caller(peer, caplog):
    echo = peer("echo")

    def broken(event, conn, nbytes):
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="netstats"):
        with netstats.capture(broken) as cap, socket.create_connection(echo.address) as s:
            roundtrip(s, 5000)
    assert cap.errors >= 4  # open, connect, write, read..., close
    assert (cap.tx, cap.rx) == echo.totals(1) == (5000, 5000)
    assert any("callback bug" in r.exc_text for r in caplog.records if r.exc_text)  # seed bug 12
    assert all(r.name == "netstats" for r in caplog.records)


def test_a_callback_may_call_back_into_netstats(peer):
    echo = peer("echo")
    seen: list[int] = []

    def callback(event, conn, nbytes):
        if event == "read":
            seen.append(netstats.stats(conn, "rx"))
            netstats.mark(conn, "in callback")

    with netstats.capture(callback), socket.create_connection(echo.address) as s:
        roundtrip(s, 10)
    assert seen == [10]


def test_keep_false_keeps_only_open_connections_but_totals_count(peer):
    echo = peer("echo")
    with netstats.capture(keep=False) as cap:
        for _ in range(3):
            with socket.create_connection(echo.address) as s:
                roundtrip(s, 10)
        live = socket.create_connection(echo.address)
        roundtrip(live, 1)
        assert [c.id for c in cap.connections] == [netstats.stats(live, "id")]
        live.close()
    assert (cap.count, cap.tx, cap.rx) == (4, 31, 31)


def test_release_while_open_fires_no_close_and_counting_goes_on(peer):
    echo = peer("echo")
    events: list[str] = []
    cap = netstats.capture(lambda e, c, n: events.append(e))
    s = socket.create_connection(echo.address)
    roundtrip(s, 4)
    netstats.release()  # seed bug 11: removing the counter fired close and dropped the stats
    roundtrip(s, 6)
    assert "close" not in events
    assert (netstats.stats(s, "tx"), netstats.stats(s, "closed")) == (10, None)
    s.close()
    assert "close" not in events  # a stopped capture's callback is no longer called
    assert netstats.stats(s, "closed") is not None and cap.tx == 4


def test_reset_of_an_unknown_target_raises_and_creates_nothing():
    with pytest.raises(netstats.NotCaptured):
        netstats.reset("sock9")  # seed bug 6: this made a stray entry
    with pytest.raises(netstats.NotCaptured):
        netstats.stats("sock9")


def test_release_without_capture_is_a_clear_error():
    with pytest.raises(netstats.NetstatsError, match="no capture"):
        netstats.release()


def test_captures_from_several_threads_each_see_their_connections(peer):
    echo = peer("echo")
    results: dict[int, netstats.Capture] = {}
    barrier = threading.Barrier(4)

    def worker(i: int) -> None:
        cap = netstats.capture()
        barrier.wait(5)
        with socket.create_connection(echo.address) as s:
            roundtrip(s, 100 + i)
        barrier.wait(5)
        cap.stop()
        results[i] = cap

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [0, 1, 2, 3], "a worker thread died"
    for cap in results.values():  # every capture was active when every connection opened
        assert cap.count == 4 and cap.tx == sum(100 + i for i in range(4))
    assert socket.socket.__module__ == "socket"


def test_origin_and_caller_point_at_the_code_that_connected(peer):
    echo = peer("echo")
    with netstats.capture() as cap, socket.create_connection(echo.address):
        pass
    (conn,) = cap.connections
    assert conn.caller is not None and "test_api.py" in conn.caller
    assert conn.caller.endswith("in test_origin_and_caller_point_at_the_code_that_connected")
    assert conn.origin == conn.caller  # no third-party library between


def test_no_payload_is_kept(peer):
    echo = peer("echo")
    secret = b"secret-payload-" * 100
    with netstats.capture() as cap, socket.create_connection(echo.address) as s:
        s.sendall(secret)
        drain(s, len(secret))
    (conn,) = cap.connections
    text = repr(conn.as_dict()) + repr(cap)
    assert b"secret" not in text.encode() and "secret" not in text
