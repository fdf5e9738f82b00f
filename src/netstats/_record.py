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


class Connection:
    """One connection (or connect attempt) seen by netstats; readable after close.

    Fields: ``id`` (unique in the process, never reused), ``pid``, ``side`` ("client" or
    "server"), ``transport`` ("tcp", "udp", "unix"), ``local``, ``remote``, ``host`` (the name
    the caller asked for, else None), ``tls`` (negotiated version or None), ``rx``/``tx``
    (application bytes read/written; the plaintext for TLS), ``reads``/``writes`` (calls that
    moved data), ``opened``/``connected``/``closed`` (wall-clock seconds), ``duration``,
    ``marks``, ``origin``, ``caller``, ``error`` (exception name of a failed connect).
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
        self._sock: Any = None
        self._watchers: tuple[Any, ...] = ()

    @property
    def conn(self) -> Connection:
        # The wrappers hold either a Connection or a _Tally; both answer `.conn`.
        return self

    @property
    def rx(self) -> int:
        return self._rx - self._base[0]

    @property
    def tx(self) -> int:
        return self._tx - self._base[1]

    @property
    def reads(self) -> int:
        return self._reads - self._base[2]

    @property
    def writes(self) -> int:
        return self._writes - self._base[3]

    @property
    def duration(self) -> float:
        end = self.closed if self.closed is not None else time.time()
        return max(0.0, end - self.opened)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data (tuples become lists), ready for JSON."""
        out = {}
        for name in FIELDS:
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
