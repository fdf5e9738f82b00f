"""`netstats run`: run a program as `python` would, capture on, children included."""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import marshal
import os
import runpy
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
import zipfile
from collections.abc import Callable

from . import _child, _state
from ._capture import Capture
from ._errors import NoSuchProgram
from ._report import Run


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
    on_signal: Callable[[Run], None] | None = None,
    watch: Callable[[Capture, list[str], str], Callable[[], None]] | None = None,
) -> Run:
    """Run a script (or `-m module`) in this process under capture; return what it did.

    SIGTERM while it runs: `on_signal` gets the Run so far, then the process ends as the signal
    would have ended it (killed by SIGTERM). `watch(capture, program, folder)`, once capturing,
    returns what to call as the program ends (the live view; children write snapshots to the
    run's folder)."""
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    # As python does before looking for the program: the script's folder, or for -m the
    # current directory, first on sys.path.
    if module:
        new_path0 = os.getcwd()
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
    folder = tempfile.mkdtemp(prefix="netstats-run-")
    saved_env = dict(os.environ)
    os.environ[_child.ENV_DIR] = folder
    os.environ["NETSTATS_SERVERS"] = "1" if servers else "0"
    os.environ["NETSTATS_LIVE"] = "1" if watch is not None else "0"
    os.environ["NETSTATS_PACKAGE_PATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_child.BOOT_DIR, os.environ.get("PYTHONPATH")]))
    _child.follow_forks()
    pid = os.getpid()
    started = time.time()
    accepts_before = _state.accepts
    cap = Capture(keep=True, servers=servers).start()
    program = [target, *args] if not module else ["-m", target, *args]
    unwatch = watch(cap, program, folder) if watch is not None else None

    def result(exit_code: int) -> Run:
        connections = [c.as_dict() for c in cap.connections] + _child.collect(folder)
        accepts = 0 if servers else _state.accepts - accepts_before + _child.accepts(folder)
        return Run(
            program=program,
            pid=pid,
            started=started,
            finished=time.time(),
            exit_code=exit_code,
            connections=connections,
            accepts_left_out=accepts,
        )

    def terminated() -> None:
        if os.getpid() != pid:  # a forked child that kept this handler: the parent reports
            return
        if unwatch is not None:
            unwatch()
        cap.stop()
        if on_signal is not None:
            on_signal(result(128 + signal.SIGTERM))
        shutil.rmtree(folder, ignore_errors=True)

    previous = _child.on_sigterm(terminated) if on_signal is not None else None
    exit_code = 0
    try:
        sys.argv = [target, *args]
        if module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            _run_path(target)
    except SystemExit as exc:
        exit_code = _exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        exit_code = 130
    except BaseException:
        # As python prints it: the traceback without netstats' own frames on top.
        etype, value, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_globals.get("__name__") in (__name__, "runpy"):
            tb = tb.tb_next
        traceback.print_exception(etype, value, tb)
        exit_code = 1
    finally:
        if os.getpid() != pid:  # a bare os.fork() child that ran on to the end of the program
            _child.dump_fork_child(cap)
            raise SystemExit(exit_code)
        if unwatch is not None:
            unwatch()
        cap.stop()
        if previous is not None and getattr(signal.getsignal(signal.SIGTERM), "netstats", False):
            signal.signal(signal.SIGTERM, previous)
        sys.argv = saved_argv
        _restore_path(saved_path0)
        os.environ.clear()
        os.environ.update(saved_env)
    run = result(exit_code)
    shutil.rmtree(folder, ignore_errors=True)
    return run


def _run_path(target: str) -> None:
    """As python runs a script: `__file__` absolute, `sys.argv[0]` as given (runpy.run_path
    gives both the path as given). A folder or zip with a `__main__` goes through runpy."""
    path = os.path.abspath(target)
    if not os.path.isfile(path) or zipfile.is_zipfile(path):
        runpy.run_path(target, run_name="__main__")
        return
    with open(path, "rb") as f:
        source = f.read()
    compiled = path.endswith(".pyc")
    code = marshal.loads(source[16:]) if compiled else compile(source, path, "exec")
    main = types.ModuleType("__main__")
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
