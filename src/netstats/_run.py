"""`netstats run`: run a program as `python` would, capture on, children included."""

from __future__ import annotations

import importlib.util
import os
import runpy
import shutil
import sys
import tempfile
import time
import traceback

from . import _child
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


def run_program(target: str, args: list[str], *, module: bool, servers: bool = False) -> Run:
    """Run a script (or `-m module`) in this process under capture; return what it did."""
    if not module and not os.path.exists(target):
        raise NoSuchProgram(f"can't open file {target!r}: no such file", 2)
    if module and not _module_exists(target):
        raise NoSuchProgram(f"No module named {target}", 1)
    folder = tempfile.mkdtemp(prefix="netstats-run-")
    saved_env = dict(os.environ)
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    os.environ[_child.ENV_DIR] = folder
    os.environ["NETSTATS_SERVERS"] = "1" if servers else "0"
    os.environ["NETSTATS_PACKAGE_PATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_child.BOOT_DIR, os.environ.get("PYTHONPATH")]))
    _child.follow_forks()
    pid = os.getpid()
    started = time.time()
    cap = Capture(keep=True, servers=servers).start()
    exit_code = 0
    try:
        if module:
            sys.argv = [target, *args]
            if sys.path:
                sys.path[0] = os.getcwd()
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *args]
            if sys.path:
                sys.path[0] = os.path.dirname(os.path.abspath(target))
            runpy.run_path(target, run_name="__main__")
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
        cap.stop()
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0
        os.environ.clear()
        os.environ.update(saved_env)
    connections = [c.as_dict() for c in cap.connections] + _child.collect(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return Run(
        program=[target, *args] if not module else ["-m", target, *args],
        pid=pid,
        started=started,
        finished=time.time(),
        exit_code=exit_code,
        connections=connections,
    )
