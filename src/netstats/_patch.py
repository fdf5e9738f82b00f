"""Every change netstats makes to the interpreter, installed and removed in this one place.

While at least one capture is active:
- `socket.socket` is `_sources.sockets.CountingSocket` (socket.py looks the name up at call
  time, so create_connection, accept, socketpair, fromfd and dup make counting sockets);
- `socket.getaddrinfo` remembers which name resolved to which address (for `host`);
- `ssl.SSLContext.sslsocket_class` / `sslobject_class` count TLS plaintext;
- `asyncio.sslproto.SSLProtocol.connection_made` links its TLS object to the socket;
- `os.sendfile` counts bytes sent by descriptor (socket.sendfile, asyncio's sendfile).
When the last capture stops, each of these is the stock object again (the same object).
Meanwhile the kernel census (_sources/census.py) sweeps the process's descriptors on a thread
of its own, for the TCP connections that C code makes.
Once per process, and harmless while nothing is captured: multiprocessing pickles our socket
classes like the stock one, and a fork first hands kernel-counted sockets back to the wrappers.
Install and uninstall with `_state.lock` held.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

from . import _engine
from ._sources import census, functions, sockets, tls


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


def _patches() -> list[Patch]:
    patches = [
        Patch(socket, "socket", lambda _orig: sockets.CountingSocket),
        Patch(socket, "getaddrinfo", functions.getaddrinfo),
        Patch(ssl.SSLContext, "sslsocket_class", lambda _orig: tls.CountingSSLSocket),
        Patch(ssl.SSLContext, "sslobject_class", lambda _orig: tls.CountingSSLObject),
    ]
    if hasattr(os, "sendfile"):
        patches.append(Patch(os, "sendfile", functions.sendfile))
    try:
        from asyncio import sslproto
    except ImportError:  # pragma: no cover - asyncio is always there on CPython
        pass
    else:
        if "connection_made" in sslproto.SSLProtocol.__dict__:
            patches.append(Patch(sslproto.SSLProtocol, "connection_made", tls.connection_made))
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

        for cls in (sockets.CountingSocket, sockets.KernelCountedSocket, sockets.RegisteredSocket):
            reduction.register(cls, reduce_shared)


_forks_followed = False


def install() -> None:
    """Put every patch in place (idempotent; call with _state.lock held)."""
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
    census.start()


def uninstall() -> None:
    """Restore every original, in reverse order (call with _state.lock held)."""
    census.stop()
    while _installed:
        _installed.pop().remove()
