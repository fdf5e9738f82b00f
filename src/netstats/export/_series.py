"""What the exporters share: a Capture's figures per label set, live, bounded and monotonic.

A SeriesTable folds each connection into the series of its label set when it closes (through the
capture's `add_observer` hook), then forgets the connection: memory grows with label sets, never
with connections. A collection adds the open connections' current figures to the closed ones'.

- Exactly once: folding and collecting hold one lock, and the engine takes a connection out of
  its open connections before it calls the observers, so a collection sees a connection either open
  (live figures) or folded (final figures), never both.
- Bounded: at most `max_series` label sets; connections beyond are counted in the `other` key.
- Stable: an open connection keeps the label set it had when first collected (its TLS version
  or name may be learned later), so its bytes never move from one series to another. That pin
  is the only per-connection state, and it is dropped at close.
- Monotonic: figures are the never-reset totals (`Connection.totals()`), and each collection
  reports at least what the previous one did for every series (a connection's kernel figures
  may be missing at close while they were known before).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._record import Connection

if TYPE_CHECKING:
    from .._capture import Capture

Key = tuple[str, ...]
MAX_SERIES = 1000
# Upper bounds (seconds) of the connection-duration histogram: loopback services to long polls.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


def peer_labels(conn: Connection) -> tuple[str, str]:
    """(address, port) of the other end, as strings ('' where there is none: Unix, unconnected UDP).

    For an accepted connection (side "server") the port is our own, the service's: the peer's
    is an ephemeral number that would make one series per connection.
    """
    remote: Any = conn.remote
    if isinstance(remote, tuple) and len(remote) >= 2:
        address, port = str(remote[0]), str(remote[1])
    elif isinstance(remote, bytes):
        address, port = remote.decode("utf-8", "replace"), ""
    else:
        address, port = ("" if remote is None else str(remote)), ""
    if conn.side == "server":
        local: Any = conn.local
        port = str(local[1]) if isinstance(local, tuple) and len(local) >= 2 else ""
    return address, port


class Figures:
    """One series: bytes, wire bytes (None until known), connections, and closed durations."""

    __slots__ = ("rx", "tx", "wire_rx", "wire_tx", "count", "duration_sum", "durations")

    def __init__(self, nbuckets: int) -> None:
        self.rx = self.tx = self.count = 0
        self.wire_rx: int | None = None
        self.wire_tx: int | None = None
        self.duration_sum = 0.0
        self.durations = [0] * (nbuckets + 1)  # closed connections per bucket, the last one +Inf

    def add(self, conn: Connection) -> None:
        rx, tx = conn.totals()
        self.rx += rx or 0  # application bytes netstats cannot know (None) count in wire bytes only
        self.tx += tx or 0
        self.count += 1
        info = conn.tcp_info()
        if info is not None:
            self.wire_rx = (self.wire_rx or 0) + info.wire_rx
            self.wire_tx = (self.wire_tx or 0) + info.wire_tx

    def copy(self) -> Figures:
        out = Figures(0)
        out.rx, out.tx, out.count, out.duration_sum = self.rx, self.tx, self.count, self.duration_sum
        out.wire_rx, out.wire_tx, out.durations = self.wire_rx, self.wire_tx, list(self.durations)
        return out

    def at_least(self, before: Figures) -> None:
        """Never report less than a previous collection did."""
        self.rx, self.tx = max(self.rx, before.rx), max(self.tx, before.tx)
        self.count = max(self.count, before.count)
        if before.wire_rx is not None:
            self.wire_rx = max(self.wire_rx or 0, before.wire_rx)
        if before.wire_tx is not None:
            self.wire_tx = max(self.wire_tx or 0, before.wire_tx)


class SeriesTable:
    """Per-label-set figures of one capture, for an exporter; `close()` stops following it.

    `labels(conn)` gives a connection's label set, `other` the one for connections beyond
    `max_series` sets; `on_close(key, conn)` is called with each connection folded.

    >>> tally = SeriesTable(cap, lambda conn: (conn.transport,), ("other",), max_series=100)
    >>> {key: (fig.rx, fig.tx) for key, fig in tally.snapshot().items()}
    {('tcp',): (5120, 310)}
    """

    def __init__(
        self,
        capture: Capture,
        labels: Callable[[Connection], Key],
        other: Key,
        *,
        max_series: int = MAX_SERIES,
        buckets: Sequence[float] = DURATION_BUCKETS,
        on_close: Callable[[Key, Connection], None] | None = None,
    ) -> None:
        if max_series < 1:
            raise ValueError(f"max_series must be at least 1, not {max_series}")
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.other = other
        self._on_close = on_close
        self._capture = capture
        self._labels = labels
        self._max = max_series
        self._lock = threading.RLock()  # reentrant: a socket collected by the GC closes in-thread
        self._series: dict[Key, Figures] = {}
        self._shown: dict[Key, Figures] = {}  # what the last collection reported, per series
        self._pins: dict[int, Key] = {}  # open connection id -> its label set, until it closes
        self._seeded: set[int] = set()
        with self._lock:
            capture.add_observer(self._fold)
            if capture.keep:  # connections closed before we came: their records are all there is
                still_open = {conn.id for conn in capture.open_connections()}
                for conn in capture.connections:
                    if conn.closed is not None and conn.id not in still_open:
                        self._seeded.add(conn.id)  # its close may be notifying observers right now
                        key = self._key(conn)
                        self._add_closed(key, conn)
                        if on_close is not None:
                            on_close(key, conn)

    def close(self) -> None:
        """Stop folding the capture's connections (what was counted stays)."""
        self._capture.remove_observer(self._fold)

    def snapshot(self) -> dict[Key, Figures]:
        """Every series: closed connections' final figures plus open connections' current ones."""
        with self._lock:
            out = {key: fig.copy() for key, fig in self._series.items()}
            for conn in self._capture.open_connections():
                key = self._pins.get(conn.id)
                if key is None:
                    key = self._key(conn)
                    if conn.closed is None:
                        self._pins[conn.id] = key
                        if conn.closed is not None:  # closed in this thread meanwhile (GC)
                            self._pins.pop(conn.id, None)
                fig = out.get(key)
                if fig is None:
                    fig = out[key] = Figures(len(self.bounds))
                fig.add(conn)
            for key, fig in out.items():
                before = self._shown.get(key)
                if before is not None:
                    fig.at_least(before)
            self._shown = {key: fig.copy() for key, fig in out.items()}
            return out

    def _key(self, conn: Connection) -> Key:
        """conn's label set, or `other` once max_series label sets exist (the series is made here)."""
        key = self._labels(conn)
        if key not in self._series:
            if len(self._series) - (self.other in self._series) >= self._max:
                key = self.other
            self._series.setdefault(key, Figures(len(self.bounds)))
        return key

    def _add_closed(self, key: Key, conn: Connection) -> None:
        fig = self._series[key]
        fig.add(conn)
        fig.duration_sum += conn.duration
        fig.durations[bisect.bisect_left(self.bounds, conn.duration)] += 1

    def _fold(self, conn: Connection) -> None:
        """The capture's observer: conn has closed, its figures final."""
        with self._lock:
            if conn.id in self._seeded:
                self._seeded.discard(conn.id)
                return
            key = self._pins.pop(conn.id, None)
            if key is None:
                key = self._key(conn)
            self._add_closed(key, conn)
        if self._on_close is not None:  # outside the lock: it may take its own (the OTel SDK's)
            self._on_close(key, conn)
