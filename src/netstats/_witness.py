"""The run's witness: makes the report when `netstats run`'s own process dies below Python.

The run's process usually reports itself: at its end, on SIGTERM or SIGHUP, after Ctrl-C. It
cannot when it dies by SIGKILL or a signal's default action, or ends in C `exit()` (uWSGI's
master does). The witness, started as the run begins, waits for the run's process to end; then,
unless the run said it reported (a file "reported" in the run's folder, or the folder gone), it
merges every process's journal (_journal.py) into the report, delivers it as the run would have
(same format, same files), and removes the folder.

It is not a child of the run's process (a shell in between starts it and exits at once), so the
program's own wait() calls never meet it; it ignores the signals a terminal or a supervisor sends
to the whole group, and reads nothing but the run's folder.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

from ._journal import Folder, read_all, running, start_ticks
from ._report import Run, deliver

ENV = "NETSTATS_WITNESS"
REPORTED = "reported"  # the run's own report is made: nothing for the witness to do


def spawn(folder: Folder, program: list[str], started: float, options: dict[str, Any]) -> None:
    """Start the witness of this process's run (a no-op where there is no POSIX shell)."""
    spec = {
        "pid": os.getpid(),
        "ticks": start_ticks(os.getpid()),
        "folder": folder.path,
        "token": folder.token,
        "program": program,
        "started": started,
        "options": options,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSTATS_")}
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    env[ENV] = json.dumps(spec)
    try:
        subprocess.run(
            ["/bin/sh", "-c", '"$0" -m netstats._witness &', sys.executable],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        pass  # no witness: the run still reports at every end Python sees


def _wait_for_end(pid: int, ticks: int | None) -> None:
    """Until the run's process has ended."""
    watch = None
    if hasattr(os, "pidfd_open"):
        try:
            watch = os.pidfd_open(pid)
        except OSError:
            pass
    while running(pid, ticks):
        if watch is not None:
            select.select([watch], [], [], 1.0)
        else:
            time.sleep(0.05)


def main() -> None:
    spec = json.loads(os.environ.pop(ENV))
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        folder = Folder.join(spec["folder"], spec["token"])
    except OSError:
        return  # already gone: the run reported
    _wait_for_end(spec["pid"], spec["ticks"])
    try:
        if os.fstat(folder.fd()).st_nlink == 0 or REPORTED in folder.names():
            return
        connections, processes, accepts = read_all(folder)
    except OSError:
        return
    run = Run(
        program=spec["program"],
        pid=spec["pid"],
        started=spec["started"],
        finished=time.time(),
        exit_code=None,  # not ours to know: the run's process was not our child
        connections=connections,
        accepts_left_out=accepts,
        processes=processes,
    )
    deliver(run, spec["options"])
    folder.delete()


if __name__ == "__main__":
    main()
