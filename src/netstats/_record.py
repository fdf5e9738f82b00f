"""The Connection record: plain data shared by every consumer (reports, plugin, exporters).

Units are bytes and seconds everywhere. Counters that the per-call wrappers bump are private
(`_rx`, `_tx`, `_reads`, `_writes`: totals since open, never reset); the public `rx`, `tx`,
`reads`, `writes` subtract the baseline that `reset()` sets, so totals for exporters stay
monotonic while users can zero what they see.
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


def _kernel_field(name: str) -> Any:
    def get(self: Connection) -> Any:
        info = self._info()
        return getattr(info, name) if info is not None else None

    return property(get, doc=f"The kernel's {name} (Linux TCP), else None.")


class Connection:
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
        "id",
        "pid",
        "side",
        "transport",
        "local",
        "remote",
        "host",
        "tls",
        "opened",
        "connected",
        "closed",
        "marks",
        "origin",
        "caller",
        "error",
        # counters bumped by the wrappers (see _hooks.py)
        "_rx",
        "_tx",
        "_reads",
        "_writes",
        "_emit",
        # baselines set by reset() and mark()
        "_base",
        "_mark",
        # kernel figures: rx/tx come from the kernel (no wrappers); TCP_INFO frozen at close
        "_kernel",
        "_tcp",
        # engine bookkeeping
        "_sock",
        "_watchers",
        "__weakref__",
    )

    def __init__(self, id: int, side: str, transport: str) -> None:
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
        self._rx = self._tx = self._reads = self._writes = 0
        self._emit: Callable[[str, Connection, Any], None] | None = None
        self._base = (0, 0, 0, 0)
        self._mark = (time.monotonic(), 0, 0)
        self._kernel = False
        self._tcp: _kernel.TcpInfo | None = None
        self._sock: Any = None
        self._watchers: tuple[Any, ...] = ()

    @property
    def conn(self) -> Connection:
        # The wrappers hold either a Connection or a _Tally; both answer `.conn`.
        return self

    def _info(self) -> _kernel.TcpInfo | None:
        """The kernel's figures: fresh while open, as frozen at close after."""
        ref = self._sock
        if self.closed is not None or ref is None or self.transport != "tcp":
            return self._tcp
        sock = ref()
        info = _kernel.read(sock, self.side == "client") if sock is not None else None
        if info is not None and self._kernel:
            self._rx = info.wire_rx - info.unread
            self._tx = info.wire_tx
        return info

    def _totals(self) -> tuple[int, int]:
        """(rx, tx) since open, never reset: what capture totals and marks add up."""
        if self._kernel and self.closed is None:
            self._info()
        return self._rx, self._tx

    @property
    def rx(self) -> int:
        return self._totals()[0] - self._base[0]

    @property
    def tx(self) -> int:
        return self._totals()[1] - self._base[1]

    @property
    def reads(self) -> int | None:
        return None if self._kernel else self._reads - self._base[2]

    @property
    def writes(self) -> int | None:
        return None if self._kernel else self._writes - self._base[3]

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
        info = self._info()  # one kernel read: its fields, and rx/tx when the kernel counts them
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
            out[name] = value
        return out

    def __repr__(self) -> str:
        state = "closed" if self.closed is not None else "open"
        peer = self.host or self.remote
        return f"<Connection #{self.id} {self.transport} {peer!r} {state} tx={self.tx} rx={self.rx}>"


_KERNEL_FIELDS = frozenset(_kernel.TcpInfo._fields) & frozenset(FIELDS)


class _Tally:
    """Where a socket's own counts go once its bytes are ciphertext (asyncio TLS).

    The plaintext is counted on the Connection by the TLS object; the socket keeps counting
    here, into the TCP stream's totals, without touching the connection's rx/tx.
    """

    __slots__ = ("conn", "_rx", "_tx", "_reads", "_writes", "_emit")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._rx = self._tx = self._reads = self._writes = 0
        self._emit = None
