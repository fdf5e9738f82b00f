"""Start-up hook for Python processes started under `netstats run` (on their PYTHONPATH)."""

import importlib.util
import os
import sys


def _netstats_start() -> None:
    try:
        from netstats import _child
    except ImportError:
        location = os.environ.get("NETSTATS_PACKAGE_PATH")
        if not location:
            return
        sys.path.append(location)
        try:
            from netstats import _child
        except ImportError:
            return
    try:
        _child.start_from_environment()
    except Exception:
        pass


def _chain() -> None:
    """Run the sitecustomize this one shadows, if there is one further along the path."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or ".") == here:
            continue
        candidate = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_netstats_shadowed_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_netstats_start()
_chain()
