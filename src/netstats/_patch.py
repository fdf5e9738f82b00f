"""Every change netstats makes to the interpreter, installed and removed in this one place.

While at least one capture is active:
- `socket.socket` is `_sources.sockets.CountingSocket` (socket.py looks the name up at call
  time, so create_connection, accept, socketpair, fromfd and dup make counting sockets);
- `socket.getaddrinfo` remembers which name resolved to which address (for `host`);
- `ssl.SSLContext.sslsocket_class` / `sslobject_class` count TLS plaintext;
- `asyncio.sslproto.SSLProtocol.connection_made` links its TLS object to the socket;
- `os.sendfile` counts bytes sent by descriptor (socket.sendfile, asyncio's sendfile);
- if gevent is imported: its socket class wraps C sockets of a counting class
  (_sources/gevent.py);
- if trio is imported: its socket methods call the socket's own, its sockets take netstats'
  classes, and its SSLStream links its TLS object to the socket (_sources/trio.py).
When the last capture stops, each of these is the stock object again (the same object).
Meanwhile the kernel census (_sources/census.py) sweeps the process's descriptors on a thread
of its own, for the TCP connections that C code makes.
Once per process, and harmless while nothing is captured: multiprocessing pickles our socket
classes like the stock one, a fork first hands kernel-counted sockets back to the wrappers, and
the stock socket class reads `_netstats_counts` as None, so a wrapper that outlives its capture
(bound by a library imported during it, like trio) behaves as the stock method on any socket.
Install and uninstall with `_state.lock` held.
"""

from __future__ import annotations

import _socket
import os
import socket
import ssl
import sys
from typing import Any

from . import _engine, _state
from ._sources import census, functions, sockets, tls
from ._sources import gevent as gevent_source
from ._sources import trio as trio_source


class Patch:
    """One attribute replaced on one owner; knows the original and puts it back exactly."""

    def __init__(self, owner: Any, name: str, make: Any) -> None:
        self.owner, self.name, self.make = owner, name, make
        self.original: Any = None
        self.replacement: Any = None
        self.installed = False

    def install(self) -> None:
        self.original = (
            self.owner.__dict__[self.name] if isinstance(self.owner, type) else getattr(self.owner, self.name)
        )
        self.replacement = self.make(self.original)
        setattr(self.owner, self.name, self.replacement)
        self.installed = True

    def remove(self) -> None:
        if self.installed:
            now = (
                self.owner.__dict__.get(self.name)
                if isinstance(self.owner, type)
                else getattr(self.owner, self.name, None)
            )
            if (
                now is self.replacement
            ):  # else someone replaced ours meanwhile (gevent's patch_all): theirs stays
                setattr(self.owner, self.name, self.original)
            self.installed = False


def _stdlib_class(cls: type, module: str) -> type:
    """The standard library's class where a monkey-patcher's subclass stands in for it (gevent)."""
    return next(k for k in cls.__mro__ if k.__module__ == module)


def _patches() -> list[Patch]:
    context = _stdlib_class(ssl.SSLContext, "ssl")
    patches = [
        Patch(socket, "getaddrinfo", functions.getaddrinfo),
        Patch(context, "sslobject_class", lambda _orig: tls.CountingSSLObject),
    ]
    if issubclass(socket.socket, _socket.socket) and issubclass(sockets.CountingSocket, _socket.socket):
        patches.append(Patch(socket, "socket", lambda _orig: sockets.CountingSocket))
        patches.append(Patch(context, "sslsocket_class", lambda _orig: tls.CountingSSLSocket))
    else:
        # Another library's socket class stands there (gevent's monkey patching: cooperative
        # I/O over a wrapped C socket, counted through that C socket below); ours would take
        # its I/O away. Anything else it does is left to the kernel census.
        if socket.socket is not gevent_source.socket_class():
            _engine.log.warning(
                "netstats: socket.socket is %s.%s, not the standard library's: its TCP "
                "connections are recorded by the kernel census (wire bytes; rx/tx unknown)",
                socket.socket.__module__,
                socket.socket.__qualname__,
            )
    if hasattr(os, "sendfile"):
        patches.append(Patch(os, "sendfile", functions.sendfile))
    try:
        from asyncio import sslproto
    except ImportError:  # pragma: no cover - asyncio is always there on CPython
        pass
    else:
        if "connection_made" in sslproto.SSLProtocol.__dict__:
            patches.append(Patch(sslproto.SSLProtocol, "connection_made", tls.connection_made))
    patches += _trio_patches()
    patches += _gevent_socket_patches() + _gevent_tls_patches()
    return patches


def _gevent_socket_patches() -> list[Patch]:
    gevent_socket = gevent_source.socket_class()
    if gevent_socket is None:
        return []
    return [Patch(gevent_socket, "_gevent_sock_class", gevent_source.counting_class)]


def _gevent_tls_patches() -> list[Patch]:
    gevent_tls = gevent_source.ssl_socket_class()
    if gevent_tls is None:
        return []
    return [
        Patch(gevent_tls, "_gevent_sock_class", gevent_source.tls_sock_class),
        Patch(gevent_tls, "__init__", gevent_source.tls_init),
        Patch(gevent_tls, "do_handshake", gevent_source.tls_handshake),
        Patch(gevent_tls, "read", gevent_source.tls_read),
        Patch(gevent_tls, "write", gevent_source.tls_write),
        Patch(gevent_tls, "send", gevent_source.tls_write),
    ]


def _trio_patches() -> list[Patch]:
    patches = []
    trio_socket = trio_source.socket_class()
    if trio_socket is not None:
        patches.append(Patch(trio_socket, "__init__", trio_source.socket_init))
        for method in trio_source.METHODS:
            if method in trio_socket.__dict__:
                patches.append(Patch(trio_socket, method, trio_source.calling_own(method)))
    ssl_stream = trio_source.ssl_stream_class()
    if ssl_stream is not None:
        patches.append(Patch(ssl_stream, "__init__", trio_source.ssl_stream_init))
    return patches


_installed: list[Patch] = []


class _LateImports:
    """On sys.meta_path while capturing: a module with patches of its own (trio, gevent's),
    imported now, gets them as soon as it has run, as if it had been imported before."""

    PATCHES = {
        "trio": _trio_patches,
        "gevent._socket3": _gevent_socket_patches,
        "gevent.ssl": _gevent_tls_patches,
    }

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.PATCHES:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_patch(module: Any) -> None:
            exec_module(module)
            _late(self.PATCHES[name])

        try:
            loader.exec_module = exec_then_patch  # this spec's own loader object
        except (AttributeError, TypeError):  # a loader that takes no attribute: patched next capture
            pass
        return spec


@_engine.guarded
def _late(patches: Any) -> None:
    with _state.lock:
        if _installed and _late_imports in sys.meta_path:
            for patch in patches():
                patch.install()
                _installed.append(patch)


_late_imports = _LateImports()


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
    sockets.count_nothing_on_stock_sockets()
    for patch in _patches():
        patch.install()
        _installed.append(patch)
    sys.meta_path.insert(0, _late_imports)
    census.start()


def uninstall() -> None:
    """Restore every original, in reverse order (call with _state.lock held)."""
    census.stop()
    while _late_imports in sys.meta_path:
        sys.meta_path.remove(_late_imports)
    while _installed:
        _installed.pop().remove()
