"""Operations on one connection: register an existing socket, read its stats, reset, mark."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from . import _engine, _patch, _state
from ._capture import Callback, Capture, _ignore
from ._errors import NotCaptured
from ._record import FIELDS, Connection
from ._sources import sockets, tls


class _Registration(Capture):
    """The watcher of a register()ed socket's own callback: live for as long as the socket."""

    def __init__(self, callback: Callback) -> None:
        super().__init__(callback, keep=False)
        self._live = True


def _connection_of(target: Any) -> Connection:
    if isinstance(target, Connection):
        return target
    if not isinstance(target, (socket.socket, ssl.SSLObject)) and hasattr(target, "fileno"):
        try:
            fd = target.fileno()
        except (OSError, ValueError):  # a closed file, say: nothing netstats captured
            fd = None
        target = _engine.socket_of(fd)  # asyncio's TransportSocket, for one
    c = (
        getattr(target, "_netstats_counts", None)
        if isinstance(target, (socket.socket, ssl.SSLObject))
        else None
    )
    if c is None:
        raise NotCaptured(f"{target!r} is not a captured socket or a netstats Connection")
    return c.conn  # type: ignore[no-any-return]


def register(sock: Any, callback: Callback | None = None) -> Connection:
    """Count an existing socket (plain or TLS) from now on; returns its Connection.

    Registering a socket twice returns the same Connection and counts nothing twice.

    >>> conn = netstats.register(sock, lambda ev, conn, n: print(ev, n))
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"register() needs a socket.socket, not {type(sock).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, not {type(callback).__name__}")
    existing = getattr(sock, "_netstats_counts", None)
    if existing is not None and existing.conn.closed is None:
        return existing.conn  # type: ignore[no-any-return]
    if sock.fileno() == -1:
        raise ValueError(f"cannot register a closed socket: {sock!r}")
    if sock.family not in _engine.FAMILIES:
        raise TypeError(f"register() supports TCP, UDP and Unix sockets, not {sock!r}")
    if sock.type == socket.SOCK_STREAM and _listening(sock):
        raise ValueError(f"cannot register a listening socket (its connections are accepted ones): {sock!r}")
    with _state.lock:
        stock_class = type(sock)
        _adopt_class(sock)
        watchers = tuple(_state.active) + ((_Registration(callback),) if callback else ())
        conn = _engine.open_connection(sock, "client", watchers or (_Registration(_ignore),), None)
        if conn is None:
            sock.__class__ = stock_class
            raise TypeError(f"register() supports TCP, UDP and Unix sockets, not {sock!r}")
    _engine.registered(conn, sock)
    if isinstance(sock, ssl.SSLSocket) and sock.version() is not None:
        _engine.tls_established(conn, sock)
    return conn


def _listening(sock: Any) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_ACCEPTCONN", 30)))
    except OSError:
        return False


def _adopt_class(sock: Any) -> None:
    cls = type(sock)
    if cls in (sockets.CountingSocket, sockets.RegisteredSocket, tls.CountingSSLSocket):
        return
    if cls is sockets._StockSocket:
        sock.__class__ = sockets.RegisteredSocket
    elif cls is ssl.SSLSocket:
        lacking = _patch.tls_socket_lacks()
        if lacking:
            raise TypeError(f"register() cannot count an ssl.SSLSocket on this Python: {'; '.join(lacking)}")
        sock.__class__ = tls.CountingSSLSocket
    else:
        raise TypeError(f"register() cannot adopt sockets of class {cls.__module__}.{cls.__qualname__}")


def stats(target: Any, what: str | None = None) -> Any:
    """Every field of a captured socket's Connection as a dict, or the one field named.

    >>> netstats.stats(sock)["tx"]
    >>> netstats.stats(sock, "rx")
    """
    conn = _connection_of(target)
    if what is None:
        return conn.as_dict()
    if what not in FIELDS:
        raise ValueError(f"unknown field {what!r}; valid: {', '.join(FIELDS)}")
    return conn.as_dict()[what] if what == "marks" else getattr(conn, what)


def reset(target: Any, full: bool = False) -> None:
    """Zero rx, tx, reads, writes and marks; `full=True` also restarts `opened`."""
    conn = _connection_of(target)
    rx, tx = conn.totals()
    rx, tx = rx or 0, tx or 0  # (None: bytes netstats cannot know stay None)
    conn._base = (rx, tx, conn._reads, conn._writes)
    conn._marks = None
    conn._mark = (time.monotonic(), rx, tx)
    if full:  # a closed connection restarts at its close: opened never passes closed
        conn.opened = time.time() if conn.closed is None else conn.closed


def mark(target: Any, name: str = "") -> dict[str, Any]:
    """Bytes and seconds since the previous mark (or open, or reset); recorded in `marks`.

    >>> netstats.mark(sock, "headers")
    {'rx': 312, 'tx': 78, 'elapsed': 0.0021}
    """
    if not isinstance(name, str):
        raise TypeError(f"mark name must be a str, not {type(name).__name__}")
    conn = _connection_of(target)
    now = time.monotonic()
    rx, tx = conn.totals()
    then, rx0, tx0 = conn._mark
    delta: dict[str, Any] = {"rx": None, "tx": None, "elapsed": now - then}
    if rx is None or tx is None:
        conn._mark = (now, 0, 0)
    else:
        conn._mark = (now, rx, tx)
        delta.update(rx=rx - rx0, tx=tx - tx0)
    conn.marks.append({"name": name, "time": time.time(), **delta})
    return delta
