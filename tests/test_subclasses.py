"""Subclasses of socket.socket, counted exactly with source "python", in both counting modes:
those made before the capture (PySocks' socksocket, which `requests` uses for socks5h://
proxies; the test's own, with and without an instance dictionary), which are their own classes
again once the capture stops, and those made during it, which keep their class and still work
after it. Every expected figure is the peer's own count (peers.py: "socks" is a SOCKS5 proxy
that counts the client's connection to it).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest
import requests
import socks
from helpers import MODES, capture_in, drain, roundtrip

import netstats

N = 50_000


class MadeBefore(socket.socket):
    """A program's subclass made before any capture, with a method of its own that calls the stock one."""

    def send(self, data: Any, flags: int = 0) -> int:
        return super().send(data, flags)


class MadeBeforeWithSlots(socket.socket):
    """The same with no instance dictionary."""

    __slots__ = ("label",)


class Deeper(MadeBefore):
    __slots__ = ()


BEFORE = (socks.socksocket, MadeBefore, MadeBeforeWithSlots, Deeper)


def classes_as_they_are() -> list[tuple[Any, ...]]:
    return [(cls.__bases__, cls.__mro__) for cls in BEFORE]


def via_socks(proxy: Any, dest: tuple[str, int]) -> Any:
    s = socks.socksocket()
    s.set_proxy(socks.SOCKS5, "127.0.0.1", proxy.port)
    s.settimeout(30)
    s.connect(dest)
    return s


# ---- made before the capture ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pysocks_socksocket_is_counted_exactly(peer, mode):
    echo = peer("echo")
    proxy = peer("socks")
    with capture_in(mode) as cap:
        with via_socks(proxy, echo.address) as s:
            for size in (1, 5_000, N):  # through makefile() (the negotiation), send, sendall, recv
                s.send(b"x" * size) if size == 1 else s.sendall(b"x" * size)
                drain(s, size)
        assert cap.count == 1
    (counted,) = proxy.wait_closed(1)
    (conn,) = cap.connections
    assert (conn.rx, conn.tx) == (counted["tx"], counted["rx"])
    assert conn.rx > N and (cap.rx, cap.tx) == (conn.rx, conn.tx)
    assert conn.source == "python" and conn.error is None and conn.closed is not None
    assert conn.remote == ("127.0.0.1", proxy.port)  # the kernel's peer: the proxy, not PySocks' answer
    assert type(s) is socks.socksocket


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_requests_over_socks5h_is_counted_exactly(peer, ca_file, mode, tls):
    target = peer("http", tls=tls)
    proxy = peer("socks")
    scheme = "https" if tls else "http"
    with capture_in(mode) as cap:
        with requests.Session() as session:
            session.trust_env = False
            r = session.post(
                f"{scheme}://localhost:{target.port}/bytes/{N}",
                data=b"u" * 20_000,
                proxies={scheme: f"socks5h://localhost:{proxy.port}"},
                verify=ca_file,
                timeout=30,
            )
            assert r.status_code == 200 and len(r.content) == N
            del r
    (tunnel,) = proxy.wait_closed(1)
    (served,) = target.wait_closed(1)
    (conn,) = [c for c in cap.connections if c.error is None]  # (::1 may be tried and refused first)
    assert conn.source == "python" and conn.closed is not None
    assert conn.remote == ("127.0.0.1", proxy.port) and conn.host == "localhost"
    if tls:  # the negotiation, then the tunnel's plaintext as the target counted it
        assert (conn.rx, conn.tx) == (
            tunnel["connect_tx"] + served["tx"],
            tunnel["connect_rx"] + served["rx"],
        )
        assert conn.tls is not None
        # (the server's close_notify may come after the client closed: it never reached the socket)
        assert conn.wire_tx == tunnel["rx"] and conn.rx < conn.wire_rx <= tunnel["tx"]
    else:
        assert (conn.rx, conn.tx) == (tunnel["tx"], tunnel["rx"])
        assert conn.tls is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", [MadeBefore, MadeBeforeWithSlots, Deeper], ids=lambda c: c.__name__)
def test_a_subclass_made_before_the_capture_is_counted_exactly(peer, mode, cls):
    echo = peer("echo")
    with capture_in(mode) as cap:
        with cls() as s:
            s.settimeout(30)
            s.connect(echo.address)
            for _ in range(20):
                s.send(b"x" * 100)
                drain(s, 100)
            roundtrip(s, N)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == echo.totals(1) == (2000 + N, 2000 + N)
    assert conn.source == "python"


@pytest.mark.parametrize("mode", MODES)
def test_tls_over_a_subclass_made_before_the_capture_counts_the_plaintext(peer, client_context, mode):
    echo = peer("echo", tls=True)
    with capture_in(mode) as cap:
        raw = MadeBefore()
        raw.settimeout(30)
        raw.connect(echo.address)
        with client_context.wrap_socket(raw, server_hostname="localhost") as s:
            roundtrip(s, N)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == echo.totals(1) == (N, N)
    assert conn.tls is not None and conn.source == "python"


def test_a_subclass_held_open_is_not_found_again_by_the_census(peer):
    """A connection of a subclass made before the capture is a Python one: the census, sweeping
    meanwhile, leaves it alone (it used to find it, source "kernel", rx/tx None)."""
    echo = peer("echo")
    proxy = peer("socks")
    with netstats.capture() as cap:
        with via_socks(proxy, echo.address) as s:
            roundtrip(s, 1000)
            time.sleep(0.6)  # a few census sweeps
    (counted,) = proxy.wait_closed(1)
    (conn,) = cap.connections
    assert conn.source == "python" and (conn.rx, conn.tx) == (counted["tx"], counted["rx"])


def test_subclasses_made_before_are_their_own_classes_again_after_the_capture(peer):
    echo = peer("echo")
    before = classes_as_they_are()
    with netstats.capture():
        during = classes_as_they_are()
        assert all(now[1] != then[1] for now, then in zip(during, before, strict=True))  # ours in each MRO
    assert classes_as_they_are() == before
    with netstats.capture() as cap:  # and again, for a second capture
        with MadeBefore() as s:
            s.connect(echo.address)
            roundtrip(s, 10)
    assert classes_as_they_are() == before
    assert [(c.rx, c.tx) for c in cap.connections] == [(10, 10)]
    with MadeBefore() as s:  # after: the stock class's methods, nothing recorded
        s.connect(echo.address)
        roundtrip(s, 10)
        assert not hasattr(s, "_netstats_counts") or s._netstats_counts is None


# ---- made during the capture ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("slots", [False, True], ids=["dict", "slots"])
def test_a_subclass_made_during_the_capture_keeps_its_class_and_works_after(peer, mode, slots):
    echo = peer("echo")
    calls: list[int] = []
    with capture_in(mode) as cap:

        class MadeDuring(socket.socket):
            if slots:
                __slots__ = ()

            def sendall(self, data: Any, flags: int = 0) -> None:
                calls.append(len(data))
                super().sendall(data, flags)

        with MadeDuring() as s:
            s.settimeout(30)
            s.connect(echo.address)
            for _ in range(20):  # past the moment a stock socket would be counted by the kernel
                roundtrip(s, 100)
            roundtrip(s, N)
            assert type(s) is MadeDuring
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == echo.totals(1) == (2000 + N, 2000 + N)
    assert len(calls) == 21
    with MadeDuring() as s:  # after the capture: a working socket, its own methods, no record
        s.settimeout(30)
        s.connect(echo.address)
        roundtrip(s, 100)
        assert type(s) is MadeDuring and len(calls) == 22
    assert len(cap.connections) == 1
    assert echo.totals(2) == (2000 + N + 100, 2000 + N + 100)


def test_a_subclass_made_during_a_capture_is_counted_by_the_next_one(peer):
    echo = peer("echo")
    with netstats.capture():

        class MadeDuring(socket.socket):
            pass

    with netstats.capture() as cap:
        with MadeDuring() as s:
            s.connect(echo.address)
            roundtrip(s, 1000)
    (conn,) = cap.connections
    assert (conn.tx, conn.rx) == echo.totals(1) == (1000, 1000)
    assert not ssl.SSLSocket.__bases__[0].__module__.startswith("netstats")  # ssl's class left alone
