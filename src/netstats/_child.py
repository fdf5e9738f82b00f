"""Child processes of `netstats run`: each captures and journals what it counts (_journal.py).

Children find the run through the environment: NETSTATS_RUN_DIR names the run's folder and
NETSTATS_RUN_ID says which folder it must be; the folder `_boot/` (on PYTHONPATH) holds a
sitecustomize that calls `start_from_environment()` at start-up. A forked child (os.fork,
multiprocessing's fork, or a C fork noticed late) starts a capture and a journal of its own:
`_lifecycle` runs `_after_fork` as the last of its fork steps. A child's journal holds its
figures however it ends; `end()` (at exit, or before a SIGTERM/SIGHUP's death) adds the last.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from . import _journal, _lifecycle, _state
from ._capture import Capture

log = logging.getLogger("netstats")

ENV_DIR = "NETSTATS_RUN_DIR"
ENV_ID = "NETSTATS_RUN_ID"
BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
_journal_now: _journal.Journal | None = None
_following = False
_stop_snapshots: Any = None  # under `netstats run --live` (_live.py)


def start_from_environment() -> None:
    """Called at start-up of every Python child of `netstats run`."""
    if os.environ.get(ENV_DIR) and _journal_now is None:
        begin()
        _lifecycle.on_signals(_ending)
        follow_forks()


def follow_forks() -> None:
    """Forked children of this process capture and journal too, and end their journal at exit."""
    global _following
    if not _following:
        _following = True
        _lifecycle.follow_run(_after_fork)
        _lifecycle.at_exit(end)


def _after_fork() -> None:
    global _journal_now
    _journal_now = None  # the parent's, copied
    if os.environ.get(ENV_DIR):
        begin()
        _lifecycle.on_signals(_ending)  # over the parent's, inherited: Process.terminate() ends workers so


def begin() -> None:
    """This process's capture and journal, in the run's folder (if it is the run's own)."""
    global _journal_now, _stop_snapshots
    try:
        folder = _journal.Folder.join(os.environ[ENV_DIR], os.environ.get(ENV_ID, ""))
    except (OSError, KeyError) as exc:
        log.warning("netstats: %s: the connections of process %d are not saved", exc, os.getpid())
        return
    accepts_before = _state.accepts
    cap = Capture(
        keep=False,
        servers=os.environ.get("NETSTATS_SERVERS") == "1",
        exchanges=os.environ.get("NETSTATS_EXCHANGES") == "1",
    ).start()

    def accepts() -> int:
        return 0 if cap.servers else _state.accepts - accepts_before

    try:
        _journal_now = _journal.Journal(folder, cap, accepts).start()
    except OSError as exc:
        log.warning("netstats: %s: the connections of process %d are not saved", exc, os.getpid())
        cap.stop()
        return
    _stop_snapshots = None
    if os.environ.get("NETSTATS_LIVE") == "1":
        from ._live import snapshots

        _stop_snapshots = snapshots(cap, folder)


def _ending(signum: int) -> None:
    end()


def end() -> None:
    """This process ends through Python: its journal's last lines (once)."""
    global _stop_snapshots
    if _stop_snapshots is not None:
        stop, _stop_snapshots = _stop_snapshots, None
        stop()
    if _journal_now is not None:
        _journal_now.end()


def end_fork_child(inherited: Capture) -> None:
    """A bare os.fork() child that ran `netstats run`'s program to its end: journal, don't print."""
    inherited.stop()
    end()
