"""The process's life as netstats sees it: fork, exit and signals, in one place, in order.

No other module registers a fork hook, an exit hook or a signal handler; each says what it must
do at such a moment as a plain function, and this module calls them in the order below.

At a fork (os.register_at_fork, registered once, at import):
  before          _engine.before_sharing: sockets the child will share are counted by the
                  wrappers again (the kernel's figures would hold both processes' bytes)
  in the child    1. _state.reset_after_fork: none of the parent's captures is active here
                  2. _record.forked: records carry this process's pid
                  3. _tags.forked: a fresh settling lock (another thread may have held it)
                  4. census.forget_after_fork: the parent's census thread did not follow
                  5. _diag.forget_after_fork: the parent's sock_diag query socket stays its own
                  6. the run's step (`netstats run`: the child's own capture and journal),
                     given by `follow_run`; it starts the child's census with its capture
  in the parent   nothing
A fork nobody told netstats of (C `fork()`) is noticed at the next connection netstats sees in
the child (`_state.same_process`): the same steps run then, the census taking the sockets the
parent knew as the ones that existed before. uWSGI, which forks in C, tells its own hook:
`told_by_uwsgi` puts the steps there.

At exit: `at_exit(step)` (atexit, and multiprocessing's finalizers for a forked child, which ends
in os._exit after running them).

Signals: `on_signals(report)`: SIGTERM and SIGHUP, where their action is still the default,
call report(signum) and then end the process by the same signal (as the default action would have).
SIGINT keeps Python's handler (KeyboardInterrupt reaches the program as always); a
KeyboardInterrupt nobody caught ends the process by SIGINT, as python itself does
(`die_by`).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import _diag, _engine, _record, _state, _tags
from ._sources import census

FATAL = (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, "SIGHUP") else (signal.SIGTERM,)
_run_step: Callable[[], None] | None = None


def _before() -> None:
    _engine.before_sharing()


def _in_child() -> None:
    _state.reset_after_fork()
    _record.forked()
    _tags.forked()
    census.forget_after_fork()
    _diag.forget_after_fork()
    if _run_step is not None:
        _run_step()


def _noticed() -> None:
    """A fork no hook told of: the child steps, late; the census keeps the parent's sockets as
    the ones that were there before (a C-level connection the child made since is its own)."""
    known = census.known_sockets()
    _in_child()
    census.baseline(known)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before, after_in_child=_in_child)
_state.on_unseen_fork(_noticed)


def told_by_uwsgi() -> None:
    """uWSGI forks its workers in C and tells Python code only through `uwsgi.post_fork_hook`:
    once its module is loaded (looked for as modules are imported while capturing), that hook
    runs the child steps first, then the hook the program set, if any."""
    uwsgi = sys.modules.get("uwsgi")
    previous = getattr(uwsgi, "post_fork_hook", None)
    if uwsgi is None or getattr(previous, "netstats", False):
        return

    def forked() -> None:
        _state.same_process()  # (the steps, if this is a new process)
        if previous is not None:
            previous()

    forked.netstats = True  # type: ignore[attr-defined]
    try:
        setattr(uwsgi, "post_fork_hook", forked)  # noqa: B010  (a module only uWSGI has)
    except (AttributeError, TypeError):
        pass


def follow_run(step: Callable[[], None]) -> None:
    """`netstats run`: step() runs last in every forked child (its own capture and journal)."""
    global _run_step
    _run_step = step


def at_exit(step: Callable[[], None]) -> None:
    """step() runs as the process ends through Python: at exit, or after a forked
    multiprocessing child's finalizers (it then ends by os._exit)."""
    atexit.register(step)
    try:
        from multiprocessing import util
    except ImportError:  # pragma: no cover
        return
    # multiprocessing clears its finalizers in a new child, then runs its after-fork hooks:
    # the step must be registered from one to be run at the child's end.
    util.register_after_fork(_Anchor, lambda _anchor: util.Finalize(None, step, exitpriority=0))


class _Anchor:
    """register_after_fork() keys its hooks by an object: this module's is this class."""


def on_signals(report: Callable[[int], None]) -> dict[int, Any]:
    """On SIGTERM or SIGHUP, call report(signum), then end the process as the signal would have.

    Installed only from the main thread, over the default action or netstats' own handler (a
    program's own handler is kept: the program then ends its own way, through Python). Returns
    {signal: the handler replaced} for `restore`."""
    replaced: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return replaced

    def ending(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        try:
            report(signum)
        finally:
            die_by(signum)

    ending.netstats = True  # type: ignore[attr-defined]
    for signum in FATAL:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_DFL or getattr(previous, "netstats", False):
            signal.signal(signum, ending)
            replaced[signum] = previous
    return replaced


def restore(replaced: dict[int, Any]) -> None:
    """Put back the handlers on_signals replaced, where netstats' own is still in place."""
    for signum, previous in replaced.items():
        if getattr(signal.getsignal(signum), "netstats", False):
            signal.signal(signum, previous)


def die_by(signum: int) -> None:
    """End this process by signum's default action (the exit status a shell or a supervisor
    reads as 'killed by signum'); returns only if that action does not end it."""
    signal.signal(signum, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
