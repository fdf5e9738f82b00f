"""Subclasses of socket.socket, counted exactly with source "python", in both counting modes:
those made during a capture keep their class and still work after it. Every expected figure is
the peer's own count.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
from helpers import MODES, capture_in, roundtrip

import netstats

N = 50_000


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
