"""The public API: capture / release, register, stats, reset, mark."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from threading import get_ident
from types import TracebackType
from typing import Any

from . import _engine, _hooks, _patch
from ._record import FIELDS, Connection

EVENTS = frozenset({"open", "connect", "read", "write", "close"})
Callback = Callable[[str, Connection, "int | None"], Any]
_busy_threads: set[int] = set()  # threads now inside a callback


def _ignore(event: str, conn: Connection, nbytes: int | None) -> None:
    pass


class NetstatsError(Exception):
    """Base of the errors netstats raises about its own API."""


class NotCaptured(NetstatsError, LookupError):
    """stats/reset/mark were given something that is neither a captured socket nor a Connection."""


class Capture:
    """Every connection opened while it is active. Use `netstats.capture()` to start one.

    >>> with netstats.capture() as cap:
    ...     urllib.request.urlopen("http://127.0.0.1:8000/").read()
    >>> cap.tx, cap.rx, [c.remote for c in cap.connections]
    """

    def __init__(
        self,
        callback: Callback | None = None,
        *,
        events: Iterable[str] | None = None,
        servers: bool = False,
        keep: bool = True,
    ) -> None:
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, not {type(callback).__name__}")
        if isinstance(events, str):
            raise TypeError("events must be a set of event names, not a string")
        chosen = EVENTS if events is None else frozenset(events)
        unknown = chosen - EVENTS
        if unknown:
            raise ValueError(f"unknown event(s) {sorted(unknown)}; valid: {sorted(EVENTS)}")
        self.callback = callback
        self.events = chosen
        self.servers = bool(servers)
        self.keep = bool(keep)
        self.count = 0  # connections opened while active
        self.errors = 0  # exceptions raised by the callback (logged to "netstats")
        self._live = False
        self._wants_io = callback is not None and bool(chosen & {"read", "write"})
        self._kept: list[Connection] = []
        self._open: dict[int, Connection] = {}
        self._closed_totals = [0, 0]
        self._final: tuple[int, int] | None = None
        self._emit, self._emit_io = self._make_emitters()
        # For the parts built on captures (pytest plugin, exporters), not for users:
        # _gate(conn) may raise to refuse a connect before any byte leaves; _observers are
        # called with each connection as it closes, its figures final.
        self._gate: Callable[[Connection], None] | None = None
        self._observers: list[Callable[[Connection], None]] = []

    # -- what users read
    @property
    def active(self) -> bool:
        return self._live

    @property
    def connections(self) -> list[Connection]:
        """Every Connection opened while active, in order (only the open ones when keep=False)."""
        return list(self._kept) if self.keep else list(self._open.values())

    @property
    def rx(self) -> int:
        """Application bytes read on this capture's connections (up to stop())."""
        return self._totals()[0]

    @property
    def tx(self) -> int:
        """Application bytes written on this capture's connections (up to stop())."""
        return self._totals()[1]

    def _totals(self) -> tuple[int, int]:
        if self._final is not None:
            return self._final
        rx, tx = self._closed_totals
        for conn in list(self._open.values()):
            conn_rx, conn_tx = conn._totals()
            rx += conn_rx
            tx += conn_tx
        return rx, tx

    # -- lifecycle
    def start(self) -> Capture:
        with _patch._lock:
            if self._live:
                return self
            if self._final is not None:
                raise NetstatsError("a stopped Capture cannot be restarted; make a new one")
            _patch.install()
            self._live = True
            _engine.active = _engine.active + (self,)
            if self.servers:
                _engine.serving = _engine.serving + (self,)
            if self._gate is not None:
                _engine.gated = _engine.gated + (self,)
        return self

    def stop(self) -> list[Connection]:
        """Stop capturing; returns the connections seen. Idempotent."""
        with _patch._lock:
            if self._live:
                self._final = self._totals()
                self._live = False
                _engine.active = tuple(c for c in _engine.active if c is not self)
                _engine.serving = tuple(c for c in _engine.serving if c is not self)
                _engine.gated = tuple(c for c in _engine.gated if c is not self)
                if not _engine.active:
                    _patch.uninstall()
                for conn in list(self._open.values()):
                    _engine.refresh(conn)
        return self.connections

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "active" if self._live else "stopped"
        return f"<netstats.Capture {state} connections={self.count} tx={self.tx} rx={self.rx}>"

    # -- called by the engine
    def _opened(self, conn: Connection) -> None:
        self.count += 1
        self._open[conn.id] = conn
        if self.keep:
            self._kept.append(conn)

    def _closed(self, conn: Connection) -> None:
        if self._open.pop(conn.id, None) is not None and self._final is None:
            self._closed_totals[0] += conn._rx
            self._closed_totals[1] += conn._tx
        for observer in self._observers:
            try:
                observer(conn)
            except Exception:
                _engine.log.exception("netstats: an observer of closed connections raised")

    def _make_emitters(self) -> tuple[_engine.Emitter, _engine.Emitter]:
        """(for every event, for reads and writes): closures, since they run per read and write.

        The second is lean: a stopped capture is no longer asked for reads and writes (stop()
        takes it off its connections), and its event filter goes when both are wanted.
        """
        callback, events, busy, log = self.callback, self.events, _busy_threads, _engine.log
        if callback is None:
            return _ignore, _ignore

        def call(event: str, conn: Connection, nbytes: int | None) -> None:
            thread = get_ident()
            if thread in busy:
                return  # the callback's own network I/O is counted, not reported back to it
            busy.add(thread)
            try:
                callback(event, conn, nbytes)
            except Exception:
                self.errors += 1
                log.exception("netstats: %s callback raised (the transfer goes on)", event)
            finally:
                busy.discard(thread)

        def emit(event: str, conn: Connection, nbytes: int | None) -> None:
            if event in events and self._live:
                call(event, conn, nbytes)

        return emit, (call if {"read", "write"} <= events else emit)


class _Registration(Capture):
    """The watcher of a register()ed socket's own callback: live for as long as the socket."""

    def __init__(self, callback: Callback) -> None:
        super().__init__(callback, keep=False)
        self._live = True


def capture(
    callback: Callback | None = None,
    *,
    events: Iterable[str] | None = None,
    servers: bool = False,
    keep: bool = True,
) -> Capture:
    """Start capturing every connection the process opens; returns the active Capture.

    callback(event, conn, nbytes) is called with event "open", "connect", "read", "write" or
    "close" (nbytes for read/write, else None); `events` limits which. `servers=True` also
    captures accepted connections; `keep=False` keeps no record of closed connections.

    >>> cap = netstats.capture(lambda ev, conn, n: print(ev, conn.id, n))
    >>> ...
    >>> conns = netstats.release()
    """
    return Capture(callback, events=events, servers=servers, keep=keep).start()


def release() -> list[Connection]:
    """Stop the most recently started capture that is still active; returns its connections."""
    with _patch._lock:
        if not _engine.active:
            raise NetstatsError("release() called with no capture active")
        return _engine.active[-1].stop()


def _connection_of(target: Any) -> Connection:
    if isinstance(target, Connection):
        return target
    if not isinstance(target, (socket.socket, ssl.SSLObject)) and hasattr(target, "fileno"):
        target = _engine.socket_of(target.fileno())  # asyncio's TransportSocket, for one
    c = getattr(target, "_ns", None) if isinstance(target, (socket.socket, ssl.SSLObject)) else None
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
    existing = getattr(sock, "_ns", None)
    if existing is not None and existing.conn.closed is None:
        return existing.conn  # type: ignore[no-any-return]
    if sock.fileno() == -1:
        raise ValueError(f"cannot register a closed socket: {sock!r}")
    with _patch._lock:
        _adopt_class(sock)
        watchers = tuple(_engine.active) + ((_Registration(callback),) if callback else ())
        conn = _engine.open_connection(sock, "client", watchers or (_Registration(_ignore),), None)
    if conn is None:
        raise TypeError(f"register() supports TCP, UDP and Unix sockets, not {sock!r}")
    try:
        conn.remote = sock.getpeername()
        conn.connected = conn.opened
    except OSError:
        pass
    if isinstance(sock, ssl.SSLSocket) and sock.version() is not None:
        _engine.tls_established(conn, sock)
    return conn


def _adopt_class(sock: Any) -> None:
    cls = type(sock)
    if cls in (_hooks.CountingSocket, _hooks.RegisteredSocket, _hooks.CountingSSLSocket):
        return
    if cls is _hooks._StockSocket:
        sock.__class__ = _hooks.RegisteredSocket
    elif cls is ssl.SSLSocket:
        sock.__class__ = _hooks.CountingSSLSocket
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
    rx, tx = conn._totals()
    conn._base = (rx, tx, conn._reads, conn._writes)
    conn.marks = []
    conn._mark = (time.monotonic(), rx, tx)
    if full:
        conn.opened = time.time()


def mark(target: Any, name: str = "") -> dict[str, Any]:
    """Bytes and seconds since the previous mark (or open, or reset); recorded in `marks`.

    >>> netstats.mark(sock, "headers")
    {'rx': 312, 'tx': 78, 'elapsed': 0.0021}
    """
    if not isinstance(name, str):
        raise TypeError(f"mark name must be a str, not {type(name).__name__}")
    conn = _connection_of(target)
    now = time.monotonic()
    rx, tx = conn._totals()
    then, rx0, tx0 = conn._mark
    conn._mark = (now, rx, tx)
    delta = {"rx": rx - rx0, "tx": tx - tx0, "elapsed": now - then}
    conn.marks.append({"name": name, "time": time.time(), **delta})
    return delta


logging.getLogger("netstats").addHandler(logging.NullHandler())
