"""A capture's figures as additions, written as they change: for counters that can only be added to.

prometheus_client's multiprocess mode keeps each process's counters in a file of its own, which
the process serving /metrics sums. `Increments` feeds such counters from one capture, per
connection: what its figures (bytes, wire bytes, one connection) gained since last written.

- When: a connection's final figures a moment after it closes, the open connections' current
  figures every `interval` seconds. A process killed with SIGKILL keeps what was written; it
  loses at most the last interval of its open connections and the closes of the last moment.
- One writer: the capture's observer only queues a closed connection; a thread of ours computes
  and writes every addition. So a connection written while open by one pass and closed by the
  next is added exactly once, and nothing is written from inside a close (a socket the GC closes
  while the thread it runs on holds prometheus_client's lock).
- Bounded, like SeriesTable: at most `max_series` label sets, the rest under `other`; an open
  connection keeps the key it was first written with. The only per-connection state is what
  was written for each open connection, dropped at its close.
- Never a silent zero: a connection whose application bytes netstats cannot know (found by the
  census: rx/tx None) adds no byte figures; its wire bytes and its count still go in. A figure
  written for the first time is written even at 0 (a known zero).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._record import Connection
from ._series import MAX_SERIES, Key
from ._tagged import split

if TYPE_CHECKING:
    from .._capture import Capture

Figure = tuple[str, Key]  # (figure name, label values): ("bytes", ("rx", *key)), ("connections", key)
log = logging.getLogger("netstats")


class Increments:
    """Calls add(name, labels, amount) as `capture`'s figures grow; `close()` stops it.

    Names: "bytes" and "wire_bytes" (labels: direction "rx"/"tx", then the connection's key,
    then its tag values with `tag_labels`) and "connections" (the key). `on_close(key, conn)`
    is called on the same thread after a closed connection's figures are added.

    >>> inc = Increments(cap, lambda conn: (conn.transport,), ("other",), print, interval=1.0)
    >>> # bytes ('tx', 'tcp') 310 ... connections ('tcp',) 1
    """

    def __init__(
        self,
        capture: Capture,
        labels: Callable[[Connection], Key],
        other: Key,
        add: Callable[[str, Key, float], None],
        *,
        on_close: Callable[[Key, Connection], None] | None = None,
        tag_labels: tuple[str, ...] = (),
        max_series: int = MAX_SERIES,
        interval: float = 1.0,
    ) -> None:
        if max_series < 1:
            raise ValueError(f"max_series must be at least 1, not {max_series}")
        if not 0 < interval <= 60:
            raise ValueError(f"interval must be more than 0 and at most 60 seconds, not {interval}")
        self._capture, self._labels, self._add, self._on_close = capture, labels, add, on_close
        self._other, self._tagged_other = other, (*other, *("other",) * len(tag_labels))
        self._tag_labels, self._max, self._interval = tag_labels, max_series, interval
        self._keys: set[Key] = set()  # label sets written so far (at most max_series)
        self._tagged_keys: set[Key] = set()  # the same, with the tag values (tag_labels)
        self._written: dict[int, tuple[Key, dict[Figure, float]]] = {}  # open connection id -> ...
        self._closed: collections.deque[Connection] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._pid = os.getpid()
        capture.add_observer(self._queue)
        self._thread = threading.Thread(target=self._run, name="netstats-increments", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following the capture, after writing what is pending and the open connections'
        figures as they are now. Idempotent."""
        self._capture.remove_observer(self._queue)
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _queue(self, conn: Connection) -> None:
        """The capture's observer: conn has closed. Runs inside the close, so it only queues."""
        if os.getpid() == self._pid:  # a forked child's copy of us has no thread to write
            self._closed.append(conn)
            self._wake.set()

    def _run(self) -> None:
        due = time.monotonic() + self._interval
        while True:
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()  # before draining: a close queued from now on wakes us again
            stopping = self._stopping
            try:
                self._write_closed()
                if stopping or time.monotonic() >= due:
                    due = time.monotonic() + self._interval
                    self._write_open()
            except Exception:
                log.exception("netstats: writing figures for prometheus_client's multiprocess mode failed")
            if stopping:
                self._write_closed()  # a close that slipped in before the observer came off
                return

    def _write_closed(self) -> None:
        while self._closed:
            conn = self._closed.popleft()
            seen = self._written.pop(conn.id, None)
            key, written = seen if seen is not None else (self._key(conn), {})
            self._write(self._figures(conn, key), written)
            if self._on_close is not None:
                self._on_close(key, conn)

    def _write_open(self) -> None:
        # A connection that closes meanwhile is written as open here, then what its close added
        # when its turn in the queue comes (the engine drops it from open_connections() first).
        for conn in self._capture.open_connections():
            seen = self._written.get(conn.id)
            key, written = seen if seen is not None else (self._key(conn), {})
            self._written[conn.id] = (key, written)
            self._write(self._figures(conn, key), written)

    def _write(self, now: dict[Figure, float], written: dict[Figure, float]) -> None:
        """Add what each figure gained since `written`, and note it there."""
        for figure, value in now.items():
            before = written.get(figure)
            if before is None or value > before:
                self._add(*figure, value - (before or 0))
                written[figure] = value

    def _figures(self, conn: Connection, key: Key) -> dict[Figure, float]:
        """conn's figures since it opened: never reset, and none for what netstats cannot know."""
        out: dict[Figure, float] = {("connections", key): 1}
        rx, tx = conn.totals()
        if rx is not None and tx is not None:
            parts = split(conn, self._tag_labels) if self._tag_labels else {(): [rx, tx]}
            for values, (part_rx, part_tx) in parts.items():
                full = (
                    self._bounded((*key, *values), self._tagged_keys, self._tagged_other) if values else key
                )
                for direction, n in (("rx", part_rx), ("tx", part_tx)):
                    figure = ("bytes", (direction, *full))
                    out[figure] = out.get(figure, 0) + n  # (tag values folded into "other" add up)
        info = conn.tcp_info()
        if info is not None:
            out[("wire_bytes", ("rx", *key))] = info.wire_rx
            out[("wire_bytes", ("tx", *key))] = info.wire_tx
        return out

    def _key(self, conn: Connection) -> Key:
        return self._bounded(self._labels(conn), self._keys, self._other)

    def _bounded(self, key: Key, seen: set[Key], other: Key) -> Key:
        """key, or `other` once max_series keys have been seen."""
        if key not in seen:
            if len(seen) >= self._max:
                return other
            seen.add(key)
        return key
