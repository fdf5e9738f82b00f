"""A Capture: every connection opened while it is active, its callback, its totals.

`capture()` starts one, `release()` stops the latest. Operations on one connection (register,
stats, reset, mark) are in _api.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from threading import get_ident
from types import TracebackType
from typing import Any

from . import _engine, _exchanges, _patch, _state, _tagging
from ._errors import NetstatsError
from ._record import Connection
from ._sources import census

EVENTS = frozenset({"open", "connect", "read", "write", "close"})
Callback = Callable[[str, Connection, "int | None"], Any]
_busy_threads: set[int] = set()  # threads now inside a callback


def _ignore(event: str, conn: Connection, nbytes: int | None) -> None:
    pass


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
        exchanges: bool = False,
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
        self.exchanges = bool(exchanges)
        self.count = 0
        """Connections opened while active."""
        self.errors = 0
        """Exceptions the callback raised (each logged to the "netstats" logger, never passed on)."""
        self._live = False
        self._wants_io = (callback is not None and bool(chosen & {"read", "write"})) or self.exchanges
        self._kept: list[Connection] = []
        self._open: dict[int, Connection] = {}
        self._closed_totals = [0, 0]
        self._final: tuple[int, int] | tuple[None, None] | None = None
        self.unknown = 0
        """Connections whose application bytes netstats cannot know (source "kernel"): while
        any, `rx` and `tx` are None."""
        self._notify, self._on_io = self._make_listeners()
        self._gate: Callable[[Connection], None] | None = None
        self._observers: list[Callable[[Connection], None]] = []

    # -- what users read
    @property
    def active(self) -> bool:
        """Whether the capture is on (between start() and stop())."""
        return self._live

    @property
    def connections(self) -> list[Connection]:
        """Every Connection opened while active, in order (only the open ones when keep=False)."""
        return list(self._kept) if self.keep else list(self._open.values())

    @property
    def rx(self) -> int | None:
        """Application bytes read on this capture's connections (up to stop()); None once a
        connection's application bytes could not be known (see `unknown`)."""
        return self._totals()[0]

    @property
    def tx(self) -> int | None:
        """Application bytes written on this capture's connections (up to stop()); None once a
        connection's application bytes could not be known (see `unknown`)."""
        return self._totals()[1]

    def by_tag(self, key: str) -> dict[str | None, dict[str, int | None]]:
        """Application bytes per value of the `netstats.tag()` label `key`; under None, the
        bytes moved without it. Needs keep=True (closed connections carry their tags).

        >>> cap.by_tag("route")  # {"/users": {"rx": 5123, "tx": 312}, None: {"rx": 0, "tx": 0}}
        """
        if not self.keep:
            raise NetstatsError("by_tag() needs a capture with keep=True (it adds up every connection)")
        return _tagging.by_tag(self._kept, key)

    def _totals(self) -> tuple[int, int] | tuple[None, None]:
        if self._final is not None:
            return self._final
        if self.unknown:
            return None, None  # a part nobody could count: the sum is not known either
        rx, tx = self._closed_totals
        for conn in list(self._open.values()):
            conn_rx, conn_tx = conn.totals()
            rx += conn_rx or 0
            tx += conn_tx or 0
        return rx, tx

    # -- lifecycle
    def start(self) -> Capture:
        """Start capturing (netstats.capture() does it); returns the capture. Idempotent; a
        stopped capture cannot start again."""
        with _state.lock:
            if self._live:
                return self
            if self._final is not None:
                raise NetstatsError("a stopped Capture cannot be restarted; make a new one")
            _patch.install()
            self._live = True
            _state.add(self)
        return self

    def stop(self) -> list[Connection]:
        """Stop capturing; returns the connections seen. Idempotent."""
        if self._live:
            census.settle()  # connections whose end the kernel has told: they end while heard of
        with _state.lock:
            if self._live:
                self._final = self._totals()
                self._live = False
                _state.remove(self)
                if not _state.active:
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

    # -- for netstats' own consumers (the pytest plugin, the exporters)
    def add_observer(self, observer: Callable[[Connection], None]) -> None:
        """Call observer(conn) as each connection closes, its figures final (errors are logged)."""
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[Connection], None]) -> None:
        """Stop calling observer; one that was never added is ignored."""
        try:
            self._observers.remove(observer)
        except ValueError:
            pass

    def open_connections(self) -> list[Connection]:
        """The connections opened while active that have not closed yet."""
        return list(self._open.values())

    def set_gate(self, gate: Callable[[Connection], None] | None) -> None:
        """Before start(): gate(conn) is called before each connect and may raise to refuse it.

        The error reaches the caller of connect() as raised; nothing has left the socket.
        """
        if self._live or self._final is not None:
            raise NetstatsError("set_gate() must come before start()")
        if gate is not None and not callable(gate):
            raise TypeError(f"gate must be callable or None, not {type(gate).__name__}")
        self._gate = gate

    # -- what the engine needs of a watcher (see _state.Watcher)
    def _io_listener(self) -> _state.IoListener | None:
        return self._on_io if self._live and self._wants_io else None

    def _opened(self, conn: Connection) -> None:
        self.count += 1
        if conn.source != "python":
            self.unknown += 1
        self._open[conn.id] = conn
        if self.keep:
            self._kept.append(conn)

    def _closed(self, conn: Connection) -> None:
        if self._open.pop(conn.id, None) is not None and self._final is None:
            self._closed_totals[0] += conn._rx  # (0 for a connection whose bytes are not known)
            self._closed_totals[1] += conn._tx
        for observer in self._observers:
            try:
                observer(conn)
            except Exception:
                _engine.log.exception("netstats: an observer of closed connections raised")

    def _make_listeners(self) -> tuple[Callback, _state.IoListener]:
        """(for every event, for reads and writes): the callback's, and exchanges noted."""
        listeners = self._make_callers()
        return self._recording(*listeners) if self.exchanges else listeners

    def _recording(self, notify: Callback, on_io: _state.IoListener) -> tuple[Callback, _state.IoListener]:
        """The listeners, with each read and write also noted as part of an exchange."""
        note = _exchanges.seen

        def exchange(event: str, conn: Connection, nbytes: int) -> None:
            try:
                if type(conn) is Connection:
                    note(event, conn)
            except Exception:
                _engine.internal_error("exchanges")
            on_io(event, conn, nbytes)

        return notify, exchange

    def _make_callers(self) -> tuple[Callback, _state.IoListener]:
        """The callback's listeners: closures, since they run per read and write.

        The second is lean: a stopped capture is no longer asked for reads and writes (stop()
        takes it off its connections), and its event filter goes when both are wanted.
        """
        callback, events, busy, log = self.callback, self.events, _busy_threads, _engine.log
        if callback is None:
            return _ignore, _ignore
        enter, leave = busy.add, busy.discard  # (bound once: this runs per read and write)

        def call(event: str, conn: Connection, nbytes: int | None) -> None:
            thread = get_ident()
            if thread in busy:
                return  # the callback's own network I/O is counted, not reported back to it
            enter(thread)
            try:
                callback(event, conn, nbytes)
            except Exception:
                self.errors += 1
                log.exception("netstats: %s callback raised (the transfer goes on)", event)
            finally:
                leave(thread)

        def notify(event: str, conn: Connection, nbytes: int | None) -> None:
            if event in events and self._live:
                call(event, conn, nbytes)

        return notify, (call if {"read", "write"} <= events else notify)


def capture(
    callback: Callback | None = None,
    *,
    events: Iterable[str] | None = None,
    servers: bool = False,
    keep: bool = True,
    exchanges: bool = False,
) -> Capture:
    """Start capturing every connection the process opens; returns the active Capture.

    callback(event, conn, nbytes) is called with event "open", "connect", "read", "write" or
    "close" (nbytes for read/write, else None); `events` limits which. `servers=True` also
    captures accepted connections; `keep=False` keeps no record of closed connections;
    `exchanges=True` records each connection's request/response exchanges (`Connection.exchanges`:
    its reads and writes are then seen one by one, a little more work per call).

    >>> cap = netstats.capture(lambda ev, conn, n: print(ev, conn.id, n))
    >>> ...
    >>> conns = netstats.release()
    """
    return Capture(callback, events=events, servers=servers, keep=keep, exchanges=exchanges).start()


def release() -> list[Connection]:
    """Stop the most recently started capture that is still active; returns its connections."""
    with _state.lock:
        for watcher in reversed(_state.active):
            if isinstance(watcher, Capture):
                return watcher.stop()
        raise NetstatsError("release() called with no capture active")
