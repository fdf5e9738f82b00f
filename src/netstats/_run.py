"""`netstats run`: run a program as `python` would, capture on, children included."""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import marshal
import os
import runpy
import signal
import sys
import time
import traceback
import types
import zipfile
from collections.abc import Callable
from typing import Any

from . import _child, _journal, _lifecycle, _state, _witness
from ._capture import Capture
from ._errors import NoSuchProgram
from ._report import Run, deliver


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _check_script(target: str) -> None:
    """What python says before running anything, as one line (python's exit codes)."""
    if not os.path.exists(target):
        raise NoSuchProgram(f"can't open file {target!r}: no such file", 2)
    if os.path.isdir(target) and not any(
        os.path.isfile(os.path.join(target, name)) for name in ("__main__.py", "__main__.pyc")
    ):
        raise NoSuchProgram(f"can't find '__main__' module in {target!r}", 1)


def run_program(
    target: str,
    args: list[str],
    *,
    module: bool,
    servers: bool = False,
    report: dict[str, Any] | None = None,
    watch: Callable[[Capture, list[str], _journal.Folder], Callable[[], None]] | None = None,
) -> Run:
    """Run a script (or `-m module`) in this process under capture; return what it did.

    Every process of the run journals what it counts (_journal.py) into the run's folder; the
    Run merges this process's capture with every journal. With `report` (the options of
    _report.deliver) the run also delivers its report, however it ends: as it returns; on
    SIGTERM or SIGHUP (then it ends by that signal, as it would have); after a Ctrl-C nobody
    caught (then it ends by SIGINT, as python does); and, if this process dies below Python
    (SIGKILL, C exit()), through its witness (_witness.py). `watch(capture, program, folder)`,
    once capturing, returns what to call as the program ends (the live view)."""
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    # As python does before looking for the program: the script's folder, or for -m the
    # current directory, first on sys.path.
    if module:
        new_path0 = os.getcwd()
    elif target == "-":  # the program on stdin: python puts the current directory first, as ""
        new_path0 = ""
    else:
        _check_script(target)
        new_path0 = (
            os.path.abspath(target) if os.path.isdir(target) else os.path.dirname(os.path.abspath(target))
        )
    if sys.path:
        sys.path[0] = new_path0
    else:
        sys.path.insert(0, new_path0)
    if module and not _module_exists(target):
        _restore_path(saved_path0)
        raise NoSuchProgram(f"No module named {target}", 1)
    folder = _journal.Folder.make()
    pid = os.getpid()
    started = time.time()
    program = [target, *args] if not module else ["-m", target, *args]
    if report is not None:
        _witness.spawn(folder, program, started, report)
    saved_env = dict(os.environ)
    os.environ[_child.ENV_DIR] = folder.path
    os.environ[_child.ENV_ID] = folder.token
    os.environ["NETSTATS_SERVERS"] = "1" if servers else "0"
    # A timeline (the page, a trace, or a saved run that may become one) draws each exchange.
    exchanges = bool(report and (report.get("html") or report.get("format") in ("json", "trace")))
    os.environ["NETSTATS_EXCHANGES"] = "1" if exchanges else "0"
    os.environ["NETSTATS_LIVE"] = "1" if watch is not None else "0"
    os.environ["NETSTATS_PACKAGE_PATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_child.BOOT_DIR, os.environ.get("PYTHONPATH")]))
    _child.follow_forks()
    accepts_before = _state.accepts
    cap = Capture(keep=True, servers=servers, exchanges=exchanges).start()

    def accepts() -> int:
        return 0 if servers else _state.accepts - accepts_before

    journal = _journal.Journal(folder, cap, accepts).start()  # for the witness
    unwatch = watch(cap, program, folder) if watch is not None else None

    def result(exit_code: int) -> Run:
        children, processes, children_accepts = _journal.read_all(folder, skip=journal.name)
        return Run(
            program=program,
            pid=pid,
            started=started,
            finished=time.time(),
            exit_code=exit_code,
            connections=[c.as_dict() for c in cap.connections] + children,
            accepts_left_out=accepts() + children_accepts,
            processes=[{"pid": pid, "parent": os.getppid(), "ended": "exit"}, *processes],
        )

    def reported(run: Run) -> Run:
        """Deliver the report (if asked), then the folder goes (the witness sees it is done)."""
        journal.close()
        if report is not None:
            deliver(run, report)
            try:
                folder.write(_witness.REPORTED, b"")
            except OSError:
                pass
        folder.delete()
        return run

    def ending(signum: int) -> None:
        if os.getpid() != pid:  # a forked child that kept this handler: its own journal ends
            _child.end()
            return
        if unwatch is not None:
            unwatch()
        cap.stop()
        reported(result(128 + signum))

    replaced = _lifecycle.on_signals(ending) if report is not None else {}
    exit_code = 0
    interrupted = False
    try:
        sys.argv = [target, *args]
        if module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            _run_path(target)
    except SystemExit as exc:
        exit_code = _exit_code(exc)
    except KeyboardInterrupt:
        _print_as_python_does()
        exit_code, interrupted = 128 + signal.SIGINT, True
    except BaseException:
        _print_as_python_does()
        exit_code = 1
    finally:
        if os.getpid() != pid:  # a bare os.fork() child that ran on to the end of the program
            _child.end_fork_child(cap)
            raise SystemExit(exit_code)
        if unwatch is not None:
            unwatch()
        cap.stop()
        _lifecycle.restore(replaced)
        sys.argv = saved_argv
        _restore_path(saved_path0)
        os.environ.clear()
        os.environ.update(saved_env)
    run = reported(result(exit_code))
    if interrupted and report is not None:
        _lifecycle.die_by(signal.SIGINT)  # as python ends after a Ctrl-C nobody caught
    return run


def _print_as_python_does() -> None:
    """The exception being handled, as python prints it: without netstats' frames on top."""
    etype, value, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in (__name__, "runpy"):
        tb = tb.tb_next
    traceback.print_exception(etype, value, tb)


def _run_path(target: str) -> None:
    """As python runs a script: `__file__` absolute, `sys.argv[0]` as given (runpy.run_path
    gives both the path as given). A folder or zip with a `__main__` goes through runpy; "-" is
    the program read from stdin, and a path that is no regular file (/dev/stdin, a pipe) is read
    as it comes, as python does."""
    main = types.ModuleType("__main__")
    if target == "-":
        code = compile(sys.stdin.buffer.read(), "<stdin>", "exec")
        main.__dict__.update(__builtins__=builtins)
    else:
        path = os.path.abspath(target)
        if os.path.isdir(path) or (os.path.isfile(path) and zipfile.is_zipfile(path)):
            runpy.run_path(target, run_name="__main__")
            return
        with open(path, "rb") as f:
            source = f.read()
        compiled = path.endswith(".pyc")
        code = marshal.loads(source[16:]) if compiled else compile(source, path, "exec")
        kind = importlib.machinery.SourcelessFileLoader if compiled else importlib.machinery.SourceFileLoader
        loader = kind("__main__", path)
        main.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins, __loader__=loader)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _restore_path(saved_path0: str | None) -> None:
    if saved_path0 is not None and sys.path:
        sys.path[0] = saved_path0
