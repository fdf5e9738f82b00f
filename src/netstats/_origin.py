"""Where a connection was made: the innermost frames outside netstats and the standard library."""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from types import FrameType

_NETSTATS = os.path.dirname(os.path.abspath(__file__)) + os.sep
_NETSTATS_KIND, _STDLIB, _PACKAGE, _USER = 0, 1, 2, 3


def _dirs(*paths: str | None) -> tuple[str, ...]:
    out = {os.path.abspath(p) + os.sep for p in paths if p}
    return tuple(sorted(out, key=len, reverse=True))


# Installed code: packages, and the console scripts that start them.
_site_paths = [sysconfig.get_paths().get(k) for k in ("purelib", "platlib", "scripts")]
try:
    _site_paths += site.getsitepackages() + [site.getusersitepackages()]
except AttributeError:  # some embedded or virtualenv-old site modules lack these
    pass
_SITE_DIRS = _dirs(*_site_paths)
_SCRIPTS_DIRS = _dirs(sysconfig.get_paths().get("scripts"), os.path.dirname(sys.executable))
_STDLIB_DIRS = _dirs(
    *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib")),
    os.path.dirname(os.__file__),
)
_kinds: dict[str, int] = {}
_places: dict[tuple[object, int], str] = {}  # formatted frames, shared by the records that have them


def _kind(filename: str) -> int:
    kind = _kinds.get(filename)
    if kind is None:
        if filename.startswith("<frozen"):
            kind = _STDLIB
        elif filename.startswith("<"):
            kind = _USER
        else:
            path = os.path.abspath(filename)
            if path.startswith(_NETSTATS):
                kind = _NETSTATS_KIND
            elif path.startswith(_SITE_DIRS):  # checked first: site-packages sits inside the stdlib dir
                kind = _PACKAGE
            elif path.startswith(_STDLIB_DIRS):
                kind = _STDLIB
            else:
                kind = _USER
        if len(_kinds) < 4096:
            _kinds[filename] = kind
    return kind


def _place(frame: FrameType) -> str:
    code = frame.f_code
    key = (code, frame.f_lineno)
    here = _places.get(key)
    if here is None:
        here = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        if len(_places) < 4096:
            _places[key] = here
    return here


def _is_main(frame: FrameType) -> bool:
    """The program's own module (`python -m http.server`), wherever its file lives; not a
    console script's launcher."""
    if frame.f_globals.get("__name__") != "__main__":
        return False
    return not os.path.abspath(frame.f_code.co_filename).startswith(_SCRIPTS_DIRS)


def where() -> tuple[str | None, str | None]:
    """(origin, caller) as "path:line in function" for the current call stack.

    origin: innermost frame outside netstats and the standard library (usually the network
    library); caller: innermost frame that is not an installed package either (the user's code).
    The program's `__main__` module is the user's code wherever it lives. netstats' own frames
    are skipped where they call in (the wrappers); where netstats calls out, running code as a
    program (`netstats run`, `netstats demo`), the walk ends there: what is further out is
    netstats' launcher, and that frame stands for origin and caller if none was found.
    """
    origin = caller = None
    outside = False  # seen a frame that is not netstats'
    kinds = _kinds
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        kind = kinds.get(filename)  # (known files without a call: this runs once per connection)
        if kind is None:
            kind = _kind(filename)
        if kind == _NETSTATS_KIND:
            if outside:
                here = _place(frame)
                return origin or here, caller or here
        else:
            outside = True
            if kind != _USER and frame.f_globals.get("__name__") == "__main__" and _is_main(frame):
                kind = _USER
            if kind >= _PACKAGE:
                here = _place(frame)
                if origin is None:
                    origin = here
                if kind == _USER:
                    caller = here
                    break
        frame = frame.f_back
    return origin, caller
