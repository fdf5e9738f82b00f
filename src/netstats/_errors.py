"""Every exception netstats raises about its own API or tools, in one place.

    Exception
     └── NetstatsError                      anything netstats itself refuses
          ├── NotCaptured (LookupError)     stats/reset/mark of something netstats does not count
          ├── NoSuchProgram                 `netstats run` of a script or module that is not there
          ├── NoSuchProcess                 `netstats top` of a PID that is not there or not the user's
          ├── MissingExtra (ImportError)    an exporter asked for without its extra installed
          └── NetstatsBlocked               pytest --netstats-block refused a connect
               (ConnectionRefusedError)     (errno ECONNREFUSED, as a refused connect would)

Errors of the observed program are never wrapped or replaced: netstats lets them through as
they were raised. Bad arguments to the API raise TypeError or ValueError naming the argument.
"""

from __future__ import annotations


class NetstatsError(Exception):
    """Base of the errors netstats raises about its own API."""


class NotCaptured(NetstatsError, LookupError):
    """stats/reset/mark were given something that is neither a captured socket nor a Connection."""


class NoSuchProgram(NetstatsError):
    """The script or module to run is not there; `exit_code` is what python would return."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoSuchProcess(NetstatsError):
    """`netstats top` was given a PID that does not exist, or whose descriptors the user cannot see."""


class MissingExtra(NetstatsError, ImportError):
    """An exporter was asked for without its extra installed; the message names the extra."""

    def __init__(self, extra: str, package: str) -> None:
        super().__init__(
            f"netstats.export.{extra} needs {package}: pip install netstats[{extra}]", name=package
        )


class NetstatsBlocked(ConnectionRefusedError, NetstatsError):
    """A connect refused by --netstats-block: the host is not in the test's allow_hosts."""
