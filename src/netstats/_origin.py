"""Where a connection was made: the innermost frames outside netstats and the standard library."""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from types import CodeType, FrameType

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
# The same files by kind, for the walk's tight loops (a set lookup, no call, per frame passed).
_netstats_files: set[str] = set()
_stdlib_files: set[str] = set()
_library_files: set[str] = set()  # the standard library's and installed packages'
# (id of a code, instruction offset) -> (that code, the formatted frame shared by the records)
_places: dict[tuple[int, int], tuple[CodeType, str]] = {}


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
            if kind != _USER and kind != _NETSTATS_KIND and _is_main_file(path):
                kind = _USER
        if len(_kinds) < 4096:
            _kinds[filename] = kind
            if kind == _NETSTATS_KIND:
                _netstats_files.add(filename)
            elif kind != _USER:
                _library_files.add(filename)
                if kind == _STDLIB:
                    _stdlib_files.add(filename)
    return kind


def _place(frame: FrameType) -> str:
    code = frame.f_code
    # By the code's id (a code object hashes its contents at every lookup), the code kept in the
    # entry so that id stays its own; by the instruction (a line number is computed).
    key = (id(code), frame.f_lasti)
    entry = _places.get(key)
    if entry is None:
        entry = (code, f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        if len(_places) < 4096:
            _places[key] = entry
    return entry[1]


def _is_main_file(path: str) -> bool:
    """The program's own module's file (`python -m http.server`), wherever it lives; not a
    console script's launcher."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(main_file, str) or os.path.abspath(main_file) != path:
        return False
    return not path.startswith(_SCRIPTS_DIRS)


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
    frame: FrameType | None = sys._getframe(1)
    ours = _netstats_files
    while frame is not None and frame.f_code.co_filename in ours:
        frame = frame.f_back  # netstats' own frames where it is called (the wrappers)
    outside = False  # seen a frame that is not netstats'
    while frame is not None:
        # Frames that cannot be the next answer, passed in a tight loop: the standard library's
        # until the origin is found, then the packages' too until the caller is.
        passed, first = _stdlib_files if origin is None else _library_files, frame
        while frame is not None and frame.f_code.co_filename in passed:
            frame = frame.f_back
        if frame is not first:
            outside = True
        if frame is None:
            break
        filename = frame.f_code.co_filename
        kind = _kinds.get(filename)
        if kind is None:
            kind = _kind(filename)
        if kind == _NETSTATS_KIND:
            if outside:
                here = _place(frame)
                return origin or here, caller or here
        else:
            outside = True
            if kind == _USER:
                caller = _place(frame)
                if origin is None:
                    origin = caller
                break
            if kind == _PACKAGE and origin is None:
                origin = _place(frame)
        frame = frame.f_back
    return origin, caller
