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

Some patches rely on private internals of the standard library, checked by name before
installing: on a Python that lacks one, that patch is left out and the "netstats" logger says
once what goes uncounted. A patch that fails half-way takes every other back out (nothing is
captured, said once).
"""

from __future__ import annotations

import os
import platform
import socket
import ssl
import types
from collections.abc import Sequence
from typing import Any

from . import _engine
from ._sources import census, functions, sockets, tls


class Patch:
    """One attribute replaced on one owner; knows the original and puts it back exactly.

    `lacking` names the stock internals the replacement relies on that this Python does not
    have; such a patch is left out, and `without` says what then goes uncounted.
    """

    def __init__(
        self, owner: Any, name: str, make: Any, lacking: Sequence[str] = (), without: str = ""
    ) -> None:
        self.owner, self.name, self.make = owner, name, make
        self.lacking, self.without = list(lacking), without
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


# ---- the stock internals the patches rely on ---------------------------------------------
# Checked by name before installing, so that a Python netstats does not know yet (a private
# method renamed, an attribute no longer set) loses what depends on it, says so once on the
# "netstats" logger, and never breaks the program.


def _name(owner: Any) -> str:
    """socket, ssl.SSLContext: a module or class as its code names it."""
    if isinstance(owner, types.ModuleType):
        return owner.__name__
    return f"{owner.__module__}.{owner.__qualname__}"


def lacks(owner: type, *names: str) -> list[str]:
    """What is missing of the names that the class owner should define itself."""
    return [f"no {_name(owner)}.{n}" for n in names if n not in vars(owner)]


def never_sets(owner: type, method: str, *names: str) -> list[str]:
    """What is missing of the attributes that owner's method should set (its code names them)."""
    function = vars(owner).get(method)
    function = getattr(function, "__func__", function)  # a classmethod's function
    used = getattr(getattr(function, "__code__", None), "co_names", ())
    unset = [n for n in names if n not in used]
    return [f"{_name(owner)}.{method} does not set {', '.join(unset)}"] if unset else []


def tls_socket_lacks() -> list[str]:
    """What CountingSSLSocket relies on of ssl.SSLSocket and this Python does not have (also
    asked by register(), which adopts an SSLSocket into it)."""
    missing = lacks(ssl.SSLSocket, "_create", "_real_close")  # wrap_socket() makes it by _create
    if missing:
        return missing
    return never_sets(ssl.SSLSocket, "_create", "_sslobj", "_connected")  # the wrappers read them


def _stock_socket_reducer() -> Any:
    try:
        from multiprocessing import reduction
    except ImportError:  # pragma: no cover - part of every CPython
        return None
    return getattr(reduction, "_reduce_socket", None)


def _patches() -> list[Patch]:
    stock_socket: Any = sockets._StockSocket
    lost_sockets = lacks(stock_socket, "_real_close")  # close() ends there: the record's end
    if _stock_socket_reducer() is None:  # without it, a captured socket could not be sent to a child
        lost_sockets.append("no multiprocessing.reduction._reduce_socket")
    patches = [
        Patch(
            socket,
            "socket",
            lambda _orig: sockets.CountingSocket,
            lost_sockets,
            "no socket is captured",
        ),
        Patch(socket, "getaddrinfo", functions.getaddrinfo),
        Patch(
            ssl.SSLContext,
            "sslsocket_class",
            lambda _orig: tls.CountingSSLSocket,
            tls_socket_lacks(),
            "a TLS socket (SSLContext.wrap_socket: http.client, urllib, requests) is not counted "
            "once TLS starts",
        ),
        Patch(ssl.SSLContext, "sslobject_class", lambda _orig: tls.CountingSSLObject),
    ]
    if hasattr(os, "sendfile"):
        patches.append(Patch(os, "sendfile", functions.sendfile))
    try:
        from asyncio import sslproto
    except ImportError:  # pragma: no cover - asyncio is always there on CPython
        pass
    else:
        protocol = sslproto.SSLProtocol
        patches.append(
            Patch(
                protocol,
                "connection_made",
                tls.connection_made,
                lacks(protocol, "connection_made") or never_sets(protocol, "__init__", "_sslobj"),
                "asyncio's TLS connections are counted as their ciphertext, with no TLS version "
                "(a client's is linked to its TLS when its first write is the handshake)",
            )
        )
    return patches


def _partly_blind() -> list[tuple[list[str], str]]:
    """Stock internals whose absence leaves a patch useful but blind to one thing."""
    return [
        (
            lacks(ssl.SSLObject, "_create"),  # wrap_bio() makes it by _create: we see its outgoing BIO
            "TLS that a library drives itself through ssl.SSLObject (anyio, httpx async) is counted "
            "as its ciphertext, with no TLS version",
        )
    ]


_installed: list[Patch] = []
_told: set[str] = set()


def _tell(message: str) -> None:
    """Log a warning on the netstats logger, once per process."""
    if message not in _told:
        _told.add(message)
        _engine.log.warning("netstats: %s", message)


def _register_reducers(reducer: Any) -> None:
    # multiprocessing finds socket reducers by exact type: ours must pickle like the stock one.
    from multiprocessing import reduction

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
    reducer = _stock_socket_reducer()
    if reducer is not None:
        _register_reducers(reducer)
    if not _forks_followed and hasattr(os, "register_at_fork"):
        _forks_followed = True  # (cannot be unregistered: a no-op while nothing is captured)
        os.register_at_fork(before=_engine.before_sharing)
    _install_patches()


def _install_patches() -> None:
    """Each patch this Python has what it needs for; all or none of those, never half.

    A patch whose stock internals this Python lacks is left out, and what it would have
    counted is said once on the "netstats" logger. A patch that fails half-way takes every
    patch already made back out with it: nothing is then captured, and that is said once too.
    """
    python = platform.python_version()
    try:
        patches, blind = _patches(), _partly_blind()
    except Exception as exc:  # an interpreter unlike any netstats knows
        _tell(
            f"Python {python}: cannot tell what to replace ({type(exc).__name__}: {exc}); nothing is captured"
        )
        return
    for lacking, without in blind:
        if lacking:
            _tell(f"Python {python}, {'; '.join(lacking)}: {without}")
    for patch in patches:
        if patch.lacking:
            _tell(f"Python {python}, {'; '.join(patch.lacking)}: {patch.without}")
            continue
        try:
            patch.install()
        except Exception as exc:
            uninstall()
            _tell(
                f"could not replace {_name(patch.owner)}.{patch.name} ({type(exc).__name__}: {exc}); "
                "every other patch was taken back out: nothing is captured"
            )
            return
        _installed.append(patch)
    census.start()


def uninstall() -> None:
    """Restore every original, in reverse order (call with _state.lock held)."""
    census.stop()
    while _installed:
        _installed.pop().remove()
