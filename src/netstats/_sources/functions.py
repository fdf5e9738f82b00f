"""Module functions netstats wraps: `socket.getaddrinfo`, and asyncio's loop.getaddrinfo() and
loop.create_connection() (for `host`); `os.sendfile`.

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


def loop_getaddrinfo(original: Any) -> Any:
    """asyncio's loop.getaddrinfo(): the lookup runs on a worker thread; its answer, back on the
    loop's thread, names that thread's next connections to its addresses as a lookup of the
    thread's own would (for host and dns_time: see _names.py)."""

    async def getaddrinfo(self: Any, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        start = _monotonic()
        results = await original(self, host, port, *args, **kwargs)
        try:
            _resolved(host, results, _monotonic() - start, True)
        except Exception:  # (guarded, written in: a lookup per connection)
            _engine.internal_error("getaddrinfo")
        return results

    getaddrinfo.__doc__ = original.__doc__
    getaddrinfo.__wrapped__ = original  # type: ignore[attr-defined]
    return getaddrinfo


def loop_create_connection(original: Any) -> Any:
    """asyncio's loop.create_connection() (asyncio.open_connection): a host given as an address
    literal is connected to without a lookup, and names no host (see _names.py)."""

    # Not a coroutine of its own: it returns asyncio's, so that no frame of netstats stands
    # between the program's and asyncio's while the connection is made (origin, caller).
    def create_connection(
        self: Any, protocol_factory: Any, host: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        if isinstance(host, str):
            try:
                _literal_asked(host, args[0] if args else kwargs.get("port"))
            except Exception:  # (guarded, written in: once per asyncio connection)
                _engine.internal_error("create_connection")
        return original(self, protocol_factory, host, *args, **kwargs)

    create_connection.__doc__ = original.__doc__
    create_connection.__wrapped__ = original  # type: ignore[attr-defined]
    return create_connection


_resolved, _literal_asked = _names.resolved, _names.literal_asked
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
