"""Start-up hook for Python processes started under `netstats run` (on their PYTHONPATH).

Every Python the program starts reads this file, whatever its version: it must parse on each
(Python 2.7 on: no annotations, type comments instead; no f-strings), do nothing at all on a
Python netstats does not support, and never raise (Python would print "Error in sitecustomize"
and skip the rest). Then it runs the sitecustomize it shadows, as that Python would have.
"""

import os
import sys


def _netstats_start():
    # type: () -> None
    if sys.version_info < (3, 11):  # noqa: UP036  (a Python netstats does not support: nothing)
        return
    try:
        try:
            from netstats import _child
        except ImportError:
            location = os.environ.get("NETSTATS_PACKAGE_PATH")
            if not location:
                return
            sys.path.append(location)
            from netstats import _child
        _child.start_from_environment()
    except Exception:  # (what site.py itself catches: never an error of netstats' at start-up)
        pass


def _chain():
    # type: () -> None
    """Run the sitecustomize this one shadows, if there is one further along the path, on any
    Python (its own errors are reported by Python as they would have been without netstats)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = entry or "."
        if os.path.abspath(folder) == here:
            continue
        candidate = os.path.join(folder, "sitecustomize.py")
        if os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                code = compile(f.read(), candidate, "exec")
            module = type(sys)("_netstats_shadowed_sitecustomize")
            module.__file__ = candidate
            exec(code, module.__dict__)
            return


_netstats_start()
_chain()
