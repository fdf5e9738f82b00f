"""Every change netstats makes to the interpreter, installed and removed in this one place.

While at least one capture is active:
- `socket.socket` is `_hooks.CountingSocket` (socket.py looks the name up at call time, so
  create_connection, accept, socketpair, fromfd and dup make counting sockets);
- `socket.getaddrinfo` remembers which name resolved to which address (for `host`);
- `ssl.SSLContext.sslsocket_class` / `sslobject_class` count TLS plaintext;
- `asyncio.sslproto.SSLProtocol.connection_made` links its TLS object to the socket;
- `os.sendfile` counts bytes sent by descriptor (socket.sendfile, asyncio's sendfile).
When the last capture stops, each of these is the stock object again (the same object).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from typing import Any

from . import _engine, _hooks

_lock = threading.RLock()  # guards installation and _engine.active / serving


class Patch:
    """One attribute replaced on one owner; knows the original and puts it back exactly."""

    def __init__(self, owner: Any, name: str, make: Any) -> None:
        self.owner, self.name, self.make = owner, name, make
        self.original: Any = None
        self.installed = False

    def install(self) -> None:
        self.original = (
            self.owner.__dict__[self.name] if isinstance(self.owner, type) else getattr(self.owner, self.name)
        )
        setattr(self.owner, self.name, self.make(self.original))
        self.installed = True

    def remove(self) -> None:
        if self.installed:
            setattr(self.owner, self.name, self.original)
            self.installed = False


def _getaddrinfo(original: Any) -> Any:
    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        try:
            results = original(host, port, family, type, proto, flags)
        except OSError as exc:  # gaierror: the attempt is recorded, the error goes on unchanged
            _engine.resolve_failed(host, port, type, exc)
            raise
        _engine.resolved(host, results)
        return results

    getaddrinfo.__doc__ = original.__doc__
    getaddrinfo.__wrapped__ = original  # type: ignore[attr-defined]
    return getaddrinfo


def _sendfile(original: Any) -> Any:
    def sendfile(out_fd: int, in_fd: int, *args: Any, **kwargs: Any) -> int:
        n: int = original(out_fd, in_fd, *args, **kwargs)
        if _engine._by_fd:
            _engine.sent_file(out_fd, n)
        return n

    sendfile.__doc__ = original.__doc__
    sendfile.__wrapped__ = original  # type: ignore[attr-defined]
    return sendfile


def _connection_made(original: Any) -> Any:
    def connection_made(self: Any, transport: Any) -> None:
        _engine.link_asyncio_protocol(self, transport)
        return original(self, transport)  # type: ignore[no-any-return]

    connection_made.__wrapped__ = original  # type: ignore[attr-defined]
    return connection_made


def _patches() -> list[Patch]:
    patches = [
        Patch(socket, "socket", lambda _orig: _hooks.CountingSocket),
        Patch(socket, "getaddrinfo", _getaddrinfo),
        Patch(ssl.SSLContext, "sslsocket_class", lambda _orig: _hooks.CountingSSLSocket),
        Patch(ssl.SSLContext, "sslobject_class", lambda _orig: _hooks.CountingSSLObject),
    ]
    if hasattr(os, "sendfile"):
        patches.append(Patch(os, "sendfile", _sendfile))
    try:
        from asyncio import sslproto
    except ImportError:  # pragma: no cover - asyncio is always there on CPython
        pass
    else:
        if "connection_made" in sslproto.SSLProtocol.__dict__:
            patches.append(Patch(sslproto.SSLProtocol, "connection_made", _connection_made))
    return patches


_installed: list[Patch] = []


def _register_reducers() -> None:
    # multiprocessing finds socket reducers by exact type: ours must pickle like the stock one.
    try:
        from multiprocessing import reduction
    except ImportError:  # pragma: no cover
        return
    reducer = getattr(reduction, "_reduce_socket", None)
    if reducer is not None:

        def reduce_shared(sock: Any) -> Any:
            _engine.before_sharing(sock)
            return reducer(sock)

        for cls in (_hooks.CountingSocket, _hooks.KernelCountedSocket, _hooks.RegisteredSocket):
            reduction.register(cls, reduce_shared)


_forks_followed = False


def install() -> None:
    """Put every patch in place (idempotent; call with _lock held)."""
    global _forks_followed
    if _installed:
        return
    _register_reducers()
    if not _forks_followed and hasattr(os, "register_at_fork"):
        _forks_followed = True  # (cannot be unregistered: a no-op while nothing is captured)
        os.register_at_fork(before=_engine.before_sharing)
    for patch in _patches():
        patch.install()
        _installed.append(patch)


def uninstall() -> None:
    """Restore every original, in reverse order (call with _lock held)."""
    while _installed:
        _installed.pop().remove()
