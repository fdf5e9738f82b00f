"""Which captures are active: the one owner of that state, and what the engine needs of one.

Three tuples, replaced and never mutated, so the per-call wrappers read them without a lock:
`active` (every live capture), `serving` (those that also want accepted connections) and
`gated` (those that may refuse a connect before it is made: the pytest plugin's block).
Only this module assigns them, under `lock`, which also guards installing and removing the
patches (see _patch.py); a forked child starts with none of its parent's captures.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._record import Connection

# What the wrappers call per read or write while someone listens: (event, connection, nbytes).
IoListener = Callable[[str, Any, int], None]


class Watcher(Protocol):
    """What the engine needs of a capture (netstats.Capture, or a register()ed socket's callback)."""

    servers: bool
    callback: Any  # None: no event to tell (the engine then skips _notify)
    # May raise to refuse a connect before any byte leaves (the pytest plugin's block), or None.
    _gate: Callable[[Connection], None] | None

    def _opened(self, conn: Connection) -> None:
        """conn was opened while this watcher was active: it is now one of its connections."""

    def _closed(self, conn: Connection) -> None:
        """conn has closed; its figures are final."""

    def _notify(self, event: str, conn: Connection, nbytes: int | None) -> None:
        """A lifecycle event ("open", "connect", "close") or a read/write, for the callback."""

    def _io_listener(self) -> IoListener | None:
        """What to call per read and write, or None while this watcher does not want them."""


lock = threading.RLock()
active: tuple[Watcher, ...] = ()
serving: tuple[Watcher, ...] = ()
gated: tuple[Watcher, ...] = ()
# Connections accepted while some capture was active, in this process: `netstats run` without
# --servers tells how many it left out of its report, without recording them.
accepts = 0
pid = os.getpid()  # the process this state belongs to
_unseen_fork: Callable[[], None] | None = None  # what a fork nobody told of needs (_lifecycle)


def on_unseen_fork(steps: Callable[[], None]) -> None:
    """steps() runs in a process forked where no fork hook ran, once noticed (same_process)."""
    global _unseen_fork
    _unseen_fork = steps


def same_process() -> bool:
    """True in the process this state belongs to. Else (a C fork(), uWSGI's: no fork hook ran,
    the parent's captures came with the memory) the lifecycle's child steps run now, and False."""
    if os.getpid() == pid:
        return True
    if _unseen_fork is not None:
        _unseen_fork()
    return False


def count_accept() -> None:
    global accepts
    with lock:
        accepts += 1


def add(watcher: Watcher) -> None:
    """Make a watcher active (call with `lock` held)."""
    global active, serving, gated
    active = (*active, watcher)
    if watcher.servers:
        serving = (*serving, watcher)
    if watcher._gate is not None:
        gated = (*gated, watcher)


def remove(watcher: Watcher) -> None:
    """Make a watcher inactive (call with `lock` held); a watcher that is not active is ignored."""
    global active, serving, gated
    active = tuple(w for w in active if w is not watcher)
    serving = tuple(w for w in serving if w is not watcher)
    gated = tuple(w for w in gated if w is not watcher)


def reset_after_fork() -> None:
    """In a forked child: the parent's captures were copied, not inherited; none is active here.

    The lock is made anew too: another thread of the parent may have held it at the fork.
    """
    global lock, active, serving, gated, accepts, pid
    lock = threading.RLock()
    active = serving = gated = ()
    accepts = 0
    pid = os.getpid()
