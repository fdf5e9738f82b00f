"""The Connection record: plain data shared by every consumer (reports, plugin, exporters).

Units are bytes and seconds everywhere. Counters that the per-call wrappers bump are private
(`_rx`, `_tx`, `_reads`, `_writes`: totals since open, never reset); the public `rx`, `tx`,
`reads`, `writes` subtract the baseline that `reset()` sets, so totals for exporters stay
monotonic while users can zero what they see.

netstats' own consumers (the pytest plugin, the exporters) read a record through
`Connection.totals()` and `Connection.tcp_info()`, never through its private slots.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from . import _kernel

FIELDS = (
    "id",
    "pid",
    "side",
    "transport",
    "local",
    "remote",
    "host",
    "tls",
    "rx",
    "tx",
    "wire_rx",
    "wire_tx",
    "rtt",
    "min_rtt",
    "retransmits",
    "retrans_bytes",
    "reads",
    "writes",
    "opened",
    "connected",
    "closed",
    "duration",
    "marks",
    "origin",
    "caller",
    "error",
)


_COMPUTED = frozenset(
    {"rx", "tx", "reads", "writes", "duration", *(set(_kernel.TcpInfo._fields) & set(FIELDS))}
)


def _kernel_field(name: str) -> Any:
    def get(self: Connection) -> Any:
        info = self.tcp_info()
        return getattr(info, name) if info is not None else None

    return property(get, doc=f"The kernel's {name} (Linux TCP), else None.")


class Counts:
    """What a socket or TLS object counts into: byte and call totals, and who hears of each.

    A Connection, or a StreamCounts while a TLS object counts the plaintext. The per-call
    wrappers add to these through `add_read` and `add_write`, the one place that does it.
    """

    __slots__ = ("_rx", "_tx", "_reads", "_writes", "_on_io")

    def __init__(self) -> None:
        self._rx = self._tx = self._reads = self._writes = 0
        # Called with ("read" | "write", connection, nbytes) per read and write, or None when
        # nobody listens (the usual case: then counting is four integer additions at most).
        self._on_io: Callable[[str, Any, int], None] | None = None

    @property
    def conn(self) -> Connection:
        raise NotImplementedError

    # The count-and-tell step of every per-call wrapper, written once (see _sources/__init__.py).
    def add_read(self, n: int) -> None:
        self._rx += n
        self._reads += 1
        if self._on_io is not None:
            self._on_io("read", self, n)

    def add_write(self, n: int) -> None:
        self._tx += n
        self._writes += 1
        if self._on_io is not None:
            self._on_io("write", self, n)


class Connection(Counts):
    """One connection (or connect attempt) seen by netstats; readable after close.

    Fields: ``id`` (unique in the process, never reused), ``pid``, ``side`` ("client" or
    "server"), ``transport`` ("tcp", "udp", "unix"), ``local``, ``remote``, ``host`` (the name
    the caller asked for, else None), ``tls`` (negotiated version or None), ``rx``/``tx``
    (application bytes read/written; the plaintext for TLS), ``wire_rx``/``wire_tx`` (bytes of
    the TCP stream, the ciphertext for TLS), ``rtt``/``min_rtt``, ``retransmits``/``retrans_bytes``
    (from the kernel: None where it cannot tell), ``reads``/``writes`` (calls that moved data;
    None when the kernel counts), ``opened``/``connected``/``closed`` (wall-clock seconds),
    ``duration``, ``marks``, ``origin``, ``caller``, ``error`` (exception name of a failed connect).
    """

    __slots__ = (
        # the fields of FIELDS that are stored; the others are computed from what follows
        *(name for name in FIELDS if name not in _COMPUTED),
        # baselines set by reset() and mark()
        "_base",
        "_mark",
        # rx/tx come from the kernel's counters (no wrappers); the kernel's figures frozen at close
        "_kernel_counted",
        "_final_info",
        # engine bookkeeping
        "_sock",
        "_watchers",
        "__weakref__",
    )

    def __init__(self, id: int, side: str, transport: str) -> None:
        super().__init__()
        self.id = id
        self.pid = os.getpid()
        self.side = side
        self.transport = transport
        self.local: Any = None
        self.remote: Any = None
        self.host: str | None = None
        self.tls: str | None = None
        self.opened = time.time()
        self.connected: float | None = None
        self.closed: float | None = None
        self.marks: list[dict[str, Any]] = []
        self.origin: str | None = None
        self.caller: str | None = None
        self.error: str | None = None
        self._base = (0, 0, 0, 0)
        self._mark = (time.monotonic(), 0, 0)
        self._kernel_counted = False
        self._final_info: _kernel.TcpInfo | None = None
        self._sock: Any = None
        self._watchers: tuple[Any, ...] = ()

    @property
    def conn(self) -> Connection:
        # Sockets and TLS objects hold a Counts: a Connection, or a StreamCounts that knows its own.
        return self

    def tcp_info(self) -> _kernel.TcpInfo | None:
        """The kernel's figures (Linux TCP): fresh while open, as frozen at close after; else None."""
        ref = self._sock
        if self.closed is not None or ref is None or self.transport != "tcp":
            return self._final_info
        sock = ref()
        info = _kernel.read(sock, self.side == "client") if sock is not None else None
        if info is not None and self._kernel_counted:
            self._rx = info.wire_rx - info.unread
            self._tx = info.wire_tx
        return info

    def totals(self) -> tuple[int, int]:
        """(rx, tx) since open, never reset by `reset()`: what capture totals, marks and exporters add up."""
        if self._kernel_counted and self.closed is None:
            self.tcp_info()
        return self._rx, self._tx

    @property
    def rx(self) -> int:
        return self.totals()[0] - self._base[0]

    @property
    def tx(self) -> int:
        return self.totals()[1] - self._base[1]

    @property
    def reads(self) -> int | None:
        return None if self._kernel_counted else self._reads - self._base[2]

    @property
    def writes(self) -> int | None:
        return None if self._kernel_counted else self._writes - self._base[3]

    # Kernel figures (see _kernel.TcpInfo): fresh while open, frozen at close, None where unknown.
    wire_rx = _kernel_field("wire_rx")
    wire_tx = _kernel_field("wire_tx")
    rtt = _kernel_field("rtt")
    min_rtt = _kernel_field("min_rtt")
    retransmits = _kernel_field("retransmits")
    retrans_bytes = _kernel_field("retrans_bytes")

    @property
    def duration(self) -> float:
        end = self.closed if self.closed is not None else time.time()
        return max(0.0, end - self.opened)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data (tuples become lists), ready for JSON."""
        info = self.tcp_info()  # one kernel read: its fields, and rx/tx when the kernel counts them
        counts = {"rx": self._rx - self._base[0], "tx": self._tx - self._base[1]}
        out: dict[str, Any] = {}
        for name in FIELDS:
            value: Any
            if name in counts:
                value = counts[name]
            elif name in _KERNEL_FIELDS:
                value = getattr(info, name) if info is not None else None
            else:
                value = getattr(self, name)
            if name == "marks":
                value = [dict(m) for m in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, bytes):  # a Unix socket's abstract address, b"\0name"
                value = value.decode("utf-8", "backslashreplace")
            out[name] = value
        return out

    def __repr__(self) -> str:
        state = "closed" if self.closed is not None else "open"
        peer = self.host or self.remote
        return f"<Connection #{self.id} {self.transport} {peer!r} {state} tx={self.tx} rx={self.rx}>"


_KERNEL_FIELDS = frozenset(_kernel.TcpInfo._fields) & frozenset(FIELDS)


class StreamCounts(Counts):
    """A TCP stream's own counts once a TLS object counts the plaintext (asyncio-style TLS).

    The socket under the TLS object moves ciphertext: it counts here, apart, so the
    connection's rx/tx stay the application's bytes.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    @property
    def conn(self) -> Connection:
        return self._conn
