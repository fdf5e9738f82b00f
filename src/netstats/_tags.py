"""Tags: which labels the code moving each byte runs under, and the per-connection tally.

`current` holds the `Scope` in force (its labels, and the tags whose own totals it adds to), or
None, set by `netstats.tag()` (_tagging.py). Nothing here runs until the first tag is set: until then
`in_use` is False, no connection listens for tags and the kernel still counts plain TCP. From
`begin()` on, every connection's read/write listener includes `attribute` (see
`_engine.io_listener`), which adds each read and write to the labels it belongs to:

- a write, and a read done in the code that asked for it, go to the labels in force there;
- a read done by an asyncio event loop's own callback on a client connection (a protocol's
  `data_received`, which runs in the context of whoever created the connection) goes to the
  labels of the connection's last writer: the request's owner gets its response ("turn
  ownership"). Exact for request/response protocols (HTTP/1.1, redis); on a multiplexed one
  (HTTP/2) the responses of interleaved requests go to whoever wrote last.

Bytes moved under no label are not tallied: they are a connection's total less its tags.

The turn's own bytes (the usual case: the code in force is the last writer's) cost one check per
read and write (`Counts.add_read` makes it): they are in the connection's own counts, and go to
the turn's tally and tags' totals when the turn is settled (`_settle`): when it changes hands,
and before anyone reads a tally (`tallies`) or a tag's totals (`settle_all`).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs


class LabelSet:
    """One set of labels, made once (`label_set`): the tallies' key, hashed by identity (a
    tuple of pairs would be hashed anew at every read and write)."""

    __slots__ = ("labels", "__weakref__")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels


_label_sets: weakref.WeakValueDictionary[Labels, LabelSet] = weakref.WeakValueDictionary()


def label_set(labels: Labels) -> LabelSet:
    """The LabelSet of these labels (alive while a tally or a scope holds it)."""
    found = _label_sets.get(labels)
    if found is None:
        found = _label_sets.setdefault(labels, LabelSet(labels))
    return found


class Scope:
    """What a byte moved now is attributed to: `key` (the merged labels of the tags in force,
    inner winning per key), `sink` (the [rx, tx] totals of the innermost tag) and `outer` (those
    of the tags around it)."""

    __slots__ = ("key", "sink", "outer")

    def __init__(self, labels: Labels, sink: list[int], outer: tuple[list[int], ...]) -> None:
        self.key = label_set(labels)
        self.sink = sink
        self.outer = outer


current: ContextVar[Scope | None] = ContextVar("netstats_tags", default=None)
_get = current.get
in_use = False  # set once by begin(), never unset: tags cost nothing before the first one
began: float | None = None  # when (time.time()) the first tag was set
_running_loop: Callable[[], Any] = lambda: None  # asyncio's, from begin() on  # noqa: E731
_current_task: Callable[[Any], Any] = lambda loop: None  # noqa: E731


def begin() -> bool:
    """The first tag is being set: from now on connections listen for tags. True the first time."""
    global in_use, began, _running_loop, _current_task
    if in_use:
        return False
    if began is None:
        began = time.time()
    import asyncio  # (only now: a program that never tags does not pay for importing it)

    _running_loop, _current_task = asyncio._get_running_loop, asyncio.current_task
    in_use = True
    return True


def end() -> None:
    """Connections opened from now on no longer listen for tags (for the tests: a program that
    has tagged keeps tagging; those already listening keep listening)."""
    global in_use, began
    in_use = False
    began = None


class Turn:
    """A connection's turn: its owner `scope` (the last writer's), the owner's tally on the
    connection (`pair`), and the connection's own rx/tx up to which they are settled."""

    __slots__ = ("scope", "pair", "rx", "tx")

    def __init__(self, scope: Scope, pair: list[int], rx: int, tx: int) -> None:
        self.scope, self.pair, self.rx, self.tx = scope, pair, rx, tx


_lock = threading.RLock()  # settling and changing turns (not the turn's own bytes: see above)


def forked() -> None:
    """In a forked child (see _lifecycle): another thread may have held the lock at the fork."""
    global _lock
    _lock = threading.RLock()


_open: set[Any] = set()  # the connections whose turn may hold bytes not yet settled
_sweep_at = 256  # len(_open) at which closed connections leave it (settled first)


def attribute(event: str, conn: Any, nbytes: int) -> None:
    """The read/write listener of tags: give nbytes to the labels it belongs to (see above).

    Called after conn's own counts took nbytes. `conn._turn` is the Turn of the last write
    under a tag, or None. When the scope in force is the turn's, every rule above gives the turn,
    and the bytes wait in conn's counts for the turn's next settling."""
    turn = conn._turn
    scope = _get()
    if turn is not None and turn.scope is scope:
        return
    with _lock:
        turn = conn._turn  # (another thread may have changed it meanwhile)
        if turn is not None and turn.scope is scope:
            return
        if event == "write":  # a new turn from this write on
            rx, tx = conn._rx, conn._tx - nbytes
            if turn is not None:
                _settle(turn, rx, tx)
            conn._turn = Turn(scope, _tally(conn, scope), rx, tx) if scope is not None else None
            if scope is not None and conn not in _open:
                _open.add(conn)
                if len(_open) >= _sweep_at:
                    _sweep()
        elif conn.side == "client" and (loop := _running_loop()) is not None and _current_task(loop) is None:
            pass  # the event loop's own read: the turn's, if any (it stays in conn's counts)
        else:  # a read under another scope than the turn's, or under none: not the turn's
            if turn is not None:
                turn.rx += nbytes
            if scope is not None:
                _add(scope, _tally(conn, scope), 0, nbytes)


def _settle(turn: Turn, rx: int, tx: int) -> None:
    """Give the turn's owner the bytes its connection moved since the last settling (up to rx, tx)."""
    drx, dtx = rx - turn.rx, tx - turn.tx
    if drx or dtx:
        turn.rx, turn.tx = rx, tx
        turn.pair[0] += drx
        turn.pair[1] += dtx
        scope = turn.scope
        for sink in (scope.sink, *scope.outer):
            sink[0] += drx
            sink[1] += dtx


def settle(conn: Any) -> None:
    """conn's tallies and the tags' totals up to date with its counts."""
    with _lock:
        turn = conn._turn
        if turn is not None:
            _settle(turn, conn._rx, conn._tx)


def settle_all() -> None:
    """Every tag's totals up to date (and closed connections out of `_open`)."""
    with _lock:
        for conn in list(_open):
            settle(conn)
            if conn.closed is not None or conn._turn is None:
                _open.discard(conn)


def _sweep() -> None:
    """`_open` has grown: closed connections leave it (settled), so it holds none for long."""
    global _sweep_at
    for conn in list(_open):
        if conn.closed is not None or conn._turn is None:
            settle(conn)
            _open.discard(conn)
    _sweep_at = max(256, 2 * len(_open))


MAX_TALLIES = 1000  # label sets tallied apart on one connection (the exporters' max_series)
OTHER = "other"  # the value of every label beyond them, as the exporters fold


def _tally(conn: Any, scope: Scope) -> list[int]:
    """conn's [rx, tx] for scope's labels, made at their first byte on it. Beyond MAX_TALLIES
    label sets on the connection (a request id as a tag value) they are folded: the same label
    names, every value OTHER; past twice that (names that never repeat), the one label set
    {OTHER: OTHER}. A long-lived connection's memory stays bounded, and its bytes are all there."""
    tally = conn._tagged
    if tally is None:
        tally = conn._tagged = {}
    pair = tally.get(scope.key)
    if pair is None:
        key = scope.key
        if len(tally) >= MAX_TALLIES:
            names = [name for name, _ in key.labels] if len(tally) < 2 * MAX_TALLIES else [OTHER]
            key = label_set(tuple((name, OTHER) for name in names))
            pair = tally.get(key)
        if pair is None:
            pair = tally[key] = [0, 0]
    return pair  # type: ignore[no-any-return]


def _add(scope: Scope, pair: list[int], i: int, nbytes: int) -> None:
    pair[i] += nbytes
    scope.sink[i] += nbytes
    for sink in scope.outer:
        sink[i] += nbytes


def with_tags(listener: Callable[[str, Any, int], None] | None) -> Callable[[str, Any, int], None]:
    """`attribute`, then listener (a capture's callback) when there is one."""
    if listener is None:
        return attribute

    def both(event: str, conn: Any, nbytes: int) -> None:
        attribute(event, conn, nbytes)
        listener(event, conn, nbytes)

    return both


def splittable(conn: Any) -> bool:
    """Whether conn's bytes can be split by tag: False for a connection that moved bytes while
    tags were in use with no netstats code on its reads and writes (the kernel counted them,
    e.g. uvloop's plain TCP), whose bytes cannot be said to be any tag's."""
    wrapped = not conn._kernel_counted and conn.source == "python"
    return began is None or wrapped or (conn.closed is not None and conn.closed <= began)


def tallies(conn: Any) -> list[tuple[Labels, int, int]]:
    """(labels, rx, tx) of each label set that moved bytes on conn, in the order first seen."""
    settle(conn)
    tally = conn._tagged
    if not tally:
        return []
    merged: dict[Labels, list[int]] = {}  # (two threads may have made a label set at once)
    for key, (rx, tx) in list(tally.items()):
        pair = merged.setdefault(key.labels, [0, 0])
        pair[0] += rx
        pair[1] += tx
    return [(labels, rx, tx) for labels, (rx, tx) in merged.items() if rx or tx]
