"""Module functions netstats wraps: `socket.getaddrinfo` (for `host`) and `os.sendfile`.

Each maker takes the stock function and returns its replacement, for _patch.py to install.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from .. import _engine, _names


def getaddrinfo(original: Any) -> Any:
    """Remember which name gave which addresses; a lookup of a name that fails is a failed attempt."""

    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        start = _monotonic()
        try:
            results = original(host, port, family, type, proto, flags)
        except OSError as exc:  # gaierror: the attempt is recorded, the error goes on unchanged
            # (Asked for a numeric address only, it fails for a name by design: trio asks so
            # first. That answers "not an address", and is no connection attempt.)
            if not flags & _NUMERIC_HOST:
                _engine.lookup_failed(host, type, exc)
            raise
        try:
            _resolved(host, results, _monotonic() - start)
        except Exception:  # (guarded, written in: a lookup per connection)
            _engine.internal_error("getaddrinfo")
        return results

    getaddrinfo.__doc__ = original.__doc__
    getaddrinfo.__wrapped__ = original  # type: ignore[attr-defined]
    return getaddrinfo


_resolved = _names.resolved
_NUMERIC_HOST = int(socket.AI_NUMERICHOST)
_monotonic = time.monotonic


def sendfile(original: Any) -> Any:
    """os.sendfile() to a captured socket's descriptor (socket.sendfile, asyncio) counts as written."""

    def sendfile(out_fd: int, in_fd: int, *args: Any, **kwargs: Any) -> int:
        n: int = original(out_fd, in_fd, *args, **kwargs)
        if n > 0 and _engine.any_by_descriptor():
            _sent_file(out_fd, n)
        return n

    sendfile.__doc__ = original.__doc__
    sendfile.__wrapped__ = original  # type: ignore[attr-defined]
    return sendfile


@_engine.guarded
def _sent_file(out_fd: int, n: int) -> None:
    c = _engine.counts_of_descriptor(out_fd)
    if c is not None:
        c.add_write(n)
