"""Capturing child processes of `netstats run`: each writes its connections to a shared folder.

Children find us through the environment: NETSTATS_RUN_DIR names the folder, and the folder
`_boot/` (on PYTHONPATH) holds a sitecustomize that calls `start_from_environment()` at start-up.
Forked children (os.fork, multiprocessing's fork) start a fresh capture of their own; they
dump through multiprocessing's exit hook, since they end with os._exit. A child ended by SIGTERM
(multiprocessing's terminate()) dumps first, then ends as the signal would have ended it.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import _state
from ._capture import Capture

ENV_DIR = "NETSTATS_RUN_DIR"
BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
_capture: Capture | None = None
_dumped = False
_following = False
_accepts_before = 0
_stop_snapshots: Callable[[], None] | None = None  # under `netstats run --live` (_live.py)


def start_from_environment() -> None:
    """Called at start-up of every Python child of `netstats run`."""
    if os.environ.get(ENV_DIR) and _capture is None:
        _begin()
        atexit.register(dump)
        on_sigterm(dump)
        follow_forks()


def on_sigterm(report: Callable[[], None]) -> Any:
    """On SIGTERM, call report(), then end the process as the signal would have (killed by
    SIGTERM). Installed only from the main thread, over the default disposition or netstats' own
    handler (a program's own is kept). Returns the handler replaced, or None if not installed."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        return None
    if previous is not signal.SIG_DFL and not getattr(previous, "netstats", False):
        return None

    def terminated(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        try:
            report()
        finally:
            os.kill(os.getpid(), signum)

    terminated.netstats = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, terminated)
    return previous


def _begin() -> None:
    global _capture, _dumped, _accepts_before, _stop_snapshots
    _accepts_before = _state.accepts
    _capture = Capture(keep=True, servers=os.environ.get("NETSTATS_SERVERS") == "1").start()
    _dumped = False
    _stop_snapshots = None
    if os.environ.get("NETSTATS_LIVE") == "1":
        from ._live import snapshots

        _stop_snapshots = snapshots(_capture, os.environ[ENV_DIR])


def follow_forks() -> None:
    global _following
    if not _following:
        _following = True
        os.register_at_fork(after_in_child=_after_fork)
        try:
            from multiprocessing import util
        except ImportError:  # pragma: no cover
            return
        # multiprocessing clears its finalizers in a new child, then runs these hooks:
        # the dump must be registered from here to survive.
        util.register_after_fork(_Anchor, _dump_at_process_exit)


class _Anchor:
    """register_after_fork() keys its hooks by an object; this module's is this class."""


def _dump_at_process_exit(_anchor: object) -> None:
    from multiprocessing import util

    util.Finalize(None, dump, exitpriority=0)


def _after_fork() -> None:
    # The parent's captures were copied into this process: the child reports only its own.
    _state.reset_after_fork()
    if os.environ.get(ENV_DIR):
        _begin()
        on_sigterm(dump)  # over the parent's, inherited: Process.terminate() ends workers so


def dump() -> None:
    """Write this process's connections to the run folder (once)."""
    global _dumped
    folder = os.environ.get(ENV_DIR)
    if _capture is None or _dumped or not folder or not os.path.isdir(folder):
        return
    _dumped = True
    if _stop_snapshots is not None:
        _stop_snapshots()
    _capture.stop()
    records: list[dict[str, Any]] = [c.as_dict() for c in _capture.connections]
    accepts = 0 if _capture.servers else _state.accepts - _accepts_before
    path = os.path.join(folder, f"{os.getpid()}.json")
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"connections": records, "accepts_left_out": accepts}, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def dump_fork_child(inherited: Capture) -> None:
    """A bare os.fork() child that ran `netstats run`'s program to its end: report, don't print."""
    inherited.stop()
    dump()


def _dumps(folder: str) -> list[dict[str, Any]]:
    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                continue
    return out


def collect(folder: str) -> list[dict[str, Any]]:
    """Every connection the children wrote, oldest process first."""
    return [conn for dump in _dumps(folder) for conn in dump["connections"]]


def accepts(folder: str) -> int:
    """Connections the children accepted and left out (they captured without servers)."""
    return sum(int(dump.get("accepts_left_out", 0)) for dump in _dumps(folder))
