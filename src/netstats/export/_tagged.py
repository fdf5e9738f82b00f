"""The exporters' `tag_labels=`: application bytes per connection label set and tag values.

A `TagTable` splits each connection's bytes by the values its `netstats.tag()` labels had
(`tag_labels`, e.g. ("route",)): the bytes moved under a tag whose labels lack one of them go
under "" for it, and so do the bytes moved under no tag. The series key is the connection's
own key (the exporter's labels) followed by those values. Like `SeriesTable` (see _series.py):
folded at close and then forgotten, bounded by `max_series` (the rest under `other`), an open
connection pinned to its first key, and never reporting less than before.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .. import _tags
from .._record import Connection
from ._series import MAX_SERIES, Key

if TYPE_CHECKING:
    from .._capture import Capture

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def checked(tag_labels: Iterable[str], taken: Iterable[str]) -> tuple[str, ...]:
    """tag_labels as a tuple, after checking each is a label name not already used."""
    if isinstance(tag_labels, str):
        raise TypeError(f"tag_labels must be a sequence of label names, e.g. ({tag_labels!r},), not a string")
    names = tuple(tag_labels)
    used = set(taken)
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"tag label {name!r} is not a valid label name ([A-Za-z_][A-Za-z0-9_]*)")
        if name in used:
            raise ValueError(f"tag label {name!r} is already a label of the exporter's own")
        used.add(name)
    return names


def split(conn: Connection, tag_labels: tuple[str, ...]) -> dict[Key, list[int]]:
    """conn's bytes since open, [rx, tx] per tuple of tag values ("" where a tag lacks one)."""
    rx, tx = conn.totals()
    out: dict[Key, list[int]] = {}
    if not _tags.splittable(conn):  # its bytes are no tag's that anyone can tell: "?" values
        out[("?",) * len(tag_labels)] = [rx or 0, tx or 0]
        return out
    rest = [rx or 0, tx or 0]  # application bytes netstats cannot know (None) count nowhere
    for labels, tag_rx, tag_tx in _tags.tallies(conn):
        named = dict(labels)
        pair = out.setdefault(tuple(named.get(k, "") for k in tag_labels), [0, 0])
        pair[0] += tag_rx
        pair[1] += tag_tx
        rest[0] -= tag_rx
        rest[1] -= tag_tx
    untagged = out.setdefault(("",) * len(tag_labels), [0, 0])
    untagged[0] += max(rest[0], 0)
    untagged[1] += max(rest[1], 0)
    return out


class TagTable:
    """[rx, tx] per (connection key + tag values) of one capture; `close()` stops following it."""

    def __init__(
        self,
        capture: Capture,
        labels: Callable[[Connection], Key],
        tag_labels: tuple[str, ...],
        other: Key,
        *,
        max_series: int = MAX_SERIES,
    ) -> None:
        self._capture = capture
        self._labels = labels
        self._tag_labels = tag_labels
        self._other = other
        self._max = max_series
        self._lock = threading.RLock()
        self._series: dict[Key, list[int]] = {}
        self._shown: dict[Key, list[int]] = {}
        self._pins: dict[int, Key] = {}  # open connection id -> its own key, until it closes
        self._folded: set[int] = set()
        with self._lock:
            capture.add_observer(self._fold)
            if capture.keep:
                still_open = {conn.id for conn in capture.open_connections()}
                for conn in capture.connections:
                    if conn.closed is not None and conn.id not in still_open:
                        self._folded.add(conn.id)
                        self._add(self._series, self._labels(conn), conn)

    def close(self) -> None:
        self._capture.remove_observer(self._fold)

    def snapshot(self) -> dict[Key, list[int]]:
        """Every series: closed connections' final figures plus open connections' current ones."""
        with self._lock:
            out = {key: list(pair) for key, pair in self._series.items()}
            for conn in self._capture.open_connections():
                own = self._pins.get(conn.id)
                if own is None:
                    own = self._pins[conn.id] = self._labels(conn)
                self._add(out, own, conn)
            for key, pair in out.items():
                before = self._shown.get(key)
                if before is not None:
                    pair[0], pair[1] = max(pair[0], before[0]), max(pair[1], before[1])
            self._shown = {key: list(pair) for key, pair in out.items()}
            return out

    def _add(self, into: dict[Key, list[int]], own: Key, conn: Connection) -> None:
        for values, (rx, tx) in split(conn, self._tag_labels).items():
            key = (*own, *values)
            if key not in self._series:
                if len(self._series) - (self._other in self._series) >= self._max:
                    key = self._other
                self._series.setdefault(key, [0, 0])
            pair = into.setdefault(key, [0, 0])
            pair[0] += rx
            pair[1] += tx

    def _fold(self, conn: Connection) -> None:
        with self._lock:
            if conn.id in self._folded:
                self._folded.discard(conn.id)
                return
            own = self._pins.pop(conn.id, None)
            self._add(self._series, own if own is not None else self._labels(conn), conn)
