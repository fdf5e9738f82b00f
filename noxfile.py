"""The whole test suite on every supported CPython, each in its own virtual environment.

The supported versions are pyproject.toml's classifiers. `make test` runs the suite on .venv's
Python; `make test-others` (nox -s others) on every other supported one, `make test-all` on all.
The project's wheel is built once per nox run (by the first session) and installed, with the
`test` extra, into each version's fresh environment under .nox/; pytest then runs from the
checkout, with the arguments given after -- (`make test-others` passes its parallel ones).
Interpreters are found on PATH as pythonX.Y, and in pyenv's versions folder where there is one;
nothing is downloaded, and a version the machine does not have is skipped (nox says which).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

PYTHONS = nox.project.python_versions(nox.project.load_toml("pyproject.toml"))
THIS = f"{sys.version_info.major}.{sys.version_info.minor}"  # .venv's, which runs nox

nox.options.default_venv_backend = "venv"
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = False  # every supported one the machine has; nox names the rest
nox.options.sessions = ["tests"]


def _patch_level(python: Path) -> int:
    """3 for .../versions/3.12.3/bin/python3.12; -1 for a build that is not a plain release."""
    patch = python.parent.parent.name.split(".")[-1]
    return int(patch) if patch.isdigit() else -1


def _pyenv_interpreters() -> None:
    """Put pyenv's installed CPythons on PATH: its shims answer only for the selected version."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for version in PYTHONS:
        installs = sorted(root.glob(f"{version}.*/bin/python{version}"), key=_patch_level)
        if installs:
            found.append(str(installs[-1].parent))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_pyenv_interpreters()


WHEELS = Path(".nox", "wheel")
_wheel: list[str] = []  # the wheel this nox run built, once built


def wheel(session: nox.Session) -> str:
    """The project's wheel (pure Python: one for every version), built at the first call."""
    if not _wheel:
        shutil.rmtree(WHEELS, ignore_errors=True)  # never a wheel of an earlier checkout
        session.run("python", "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(WHEELS), ".")
        _wheel.extend(str(path) for path in WHEELS.glob("netstats-*.whl"))
    return _wheel[0]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite (pytest arguments after --), as `make test` runs it: on the workers,
    then the tests that need the machine alone (tests/conftest.py) in one process."""
    session.install(f"netstats[test] @ {Path(wheel(session)).resolve().as_uri()}")
    session.run("python", "-m", "pytest", *session.posargs, "-m", "not alone")
    session.run("python", "-m", "pytest", "-m", "alone")


@nox.session(python=False)
def others(session: nox.Session) -> None:
    """The suite on every supported CPython except the one running nox (make test's)."""
    for version in PYTHONS:
        if version != THIS:
            session.notify(f"tests-{version}", session.posargs)
