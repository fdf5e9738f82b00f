"""Every change netstats makes to the interpreter, installed and removed in this one place.

While at least one capture is active:
- `socket.socket` is `_sources.sockets.CountingSocket` (socket.py looks the name up at call
  time, so create_connection, accept, socketpair, fromfd and dup make counting sockets);
- every subclass of the stock socket class that exists (PySocks' socksocket) has netstats'
  wrappers in the stock class's place among its bases (`Rebase`): it counts like socket.socket;
- `socket.getaddrinfo` remembers which name resolved to which address (for `host`); so does
  asyncio's `BaseEventLoop.getaddrinfo` (its answer, on the loop's thread), and its
  `create_connection` says when an address literal is asked for (it names no host);
- `ssl.SSLContext.sslsocket_class` / `sslobject_class` count TLS plaintext;
- `asyncio.sslproto.SSLProtocol.connection_made` links its TLS object to the socket;
- `os.sendfile` counts bytes sent by descriptor (socket.sendfile, asyncio's sendfile);
- if gevent is imported: its socket class wraps C sockets of a counting class, and its TLS
  socket counts the plaintext (_sources/gevent.py);
- if trio is imported: its socket methods call the socket's own, its sockets take netstats'
  classes, and its SSLStream links its TLS object to the socket (_sources/trio.py);
- if uvloop is imported: its Loop's create_connection, create_server, connect_accepted_socket
  and start_tls (overridden on the Python subclass) tell netstats of each transport through a
  one-shot hook on the program's protocol (_sources/uvloop.py);
- if pyOpenSSL is imported: its `OpenSSL.SSL.Connection` counts the plaintext (_sources/pyopenssl.py);
- if Twisted is imported: its resolver goes through `socket.getaddrinfo`, and its TLS protocol
  links its pyOpenSSL Connection to the socket (_sources/twisted.py);
- C drivers, where the census runs (_sources/drivers.py): if psycopg2 is imported, its
  `connect`; psycopg 3, `Connection.connect`, `AsyncConnection.connect` and `psycopg.connect`;
  MySQLdb, `connections.Connection.__init__`; pycurl, `pycurl.Curl` (a subclass); grpc,
  `grpc._channel.Channel.__init__` and `_close`: each tells the census of the connection it made;
  any of these (and trio, gevent) imported during a capture gets its patches as soon as it has
  loaded (`_LateImports`).
When the last capture stops, each of these is the stock object again (the same object).
Meanwhile the kernel census (_sources/census.py) sweeps the process's descriptors on a thread
of its own, for the TCP connections that C code makes.
Once per process, and harmless while nothing is captured: multiprocessing pickles our socket
classes like the stock one, a fork first hands kernel-counted sockets back to the wrappers, and
the stock socket class reads `_netstats_counts` as None, so a wrapper that outlives its capture
(bound by a library imported during it, like trio) behaves as the stock method on any socket.
Install and uninstall with `_state.lock` held.

Some patches rely on private internals of the standard library, checked by name before
installing: on a Python that lacks one, that patch is left out and the "netstats" logger says
once what goes uncounted. A patch that fails half-way takes every other back out (nothing is
captured, said once).
"""

from __future__ import annotations

import _socket
import os
import platform
import socket
import ssl
import sys
import types
from collections.abc import Sequence
from typing import Any

from . import _engine, _lifecycle, _state
from ._sources import census, drivers, functions, pyopenssl, sockets, tls
from ._sources import gevent as gevent_source
from ._sources import trio as trio_source
from ._sources import twisted as twisted_source
from ._sources import uvloop as uvloop_source


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
            owner = self.owner
            now = (
                owner.__dict__.get(self.name) if isinstance(owner, type) else getattr(owner, self.name, None)
            )
            if (
                now is self.replacement
            ):  # else another replaced ours meanwhile (gevent's patch_all): theirs stays
                setattr(owner, self.name, self.original)
            self.installed = False


class Override(Patch):
    """A method a class inherits (uvloop's Loop, from its compiled base) overridden on the class
    itself; removing the override lets the inherited one show through again."""

    def install(self) -> None:
        self.own = self.name in vars(self.owner)
        self.original = getattr(self.owner, self.name)
        self.replacement = self.make(self.original)
        setattr(self.owner, self.name, self.replacement)
        self.installed = True

    def remove(self) -> None:
        if self.installed:
            if vars(self.owner).get(self.name) is self.replacement:
                if self.own:
                    setattr(self.owner, self.name, self.original)
                else:
                    delattr(self.owner, self.name)
            self.installed = False


class Rebase(Patch):
    """A class's base replaced in its `__bases__` (a subclass of the stock socket made before the
    capture gets netstats' wrappers under its own methods); the original tuple goes back exactly."""

    def __init__(self, owner: type, old: type, new: type) -> None:
        super().__init__(owner, "__bases__", None)
        self.old, self.new = old, new

    def install(self) -> None:
        self.original = self.owner.__bases__
        self.replacement = tuple(self.new if base is self.old else base for base in self.original)
        try:
            self.owner.__bases__ = self.replacement
        except TypeError as exc:  # (a class CPython will not rebase): it alone is left out, said once
            _tell(
                f"sockets of class {_name(self.owner)} are not counted ({exc}): the census finds "
                "their TCP connections (wire bytes; rx/tx unknown)"
            )
            return
        self.installed = True

    def remove(self) -> None:
        if self.installed:
            if self.owner.__bases__ == self.replacement:  # else another changed them meanwhile: theirs stay
                self.owner.__bases__ = self.original
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


def _stdlib_class(cls: type, module: str) -> type:
    """The standard library's class where a monkey-patcher's subclass stands in for it (gevent)."""
    return next(k for k in cls.__mro__ if k.__module__ == module)


def _patches() -> list[Patch]:
    stock_socket: Any = sockets._StockSocket
    lost_sockets = lacks(stock_socket, "_real_close")  # close() ends there: the record's end
    if _stock_socket_reducer() is None:  # without it, a captured socket could not be sent to a child
        lost_sockets.append("no multiprocessing.reduction._reduce_socket")
    context = _stdlib_class(ssl.SSLContext, "ssl")
    patches = [
        Patch(socket, "getaddrinfo", functions.getaddrinfo),
        Patch(context, "sslobject_class", lambda _orig: tls.CountingSSLObject),
    ]
    if issubclass(socket.socket, _socket.socket) and issubclass(stock_socket, _socket.socket):
        patches.append(
            Patch(
                socket,
                "socket",
                lambda _orig: sockets.CountingSocket,
                lost_sockets,
                "no socket is captured",
            )
        )
        patches += _subclass_patches()
        patches.append(
            Patch(
                context,
                "sslsocket_class",
                lambda _orig: tls.CountingSSLSocket,
                tls_socket_lacks(),
                "a TLS socket (SSLContext.wrap_socket: http.client, urllib, requests) is not counted "
                "once TLS starts",
            )
        )
    elif socket.socket is not gevent_source.socket_class():
        # Another library's socket class stands there; ours would take its I/O away. (gevent's,
        # cooperative I/O over a wrapped C socket, is counted through that C socket below.)
        _tell(
            f"socket.socket is {_name(socket.socket)}, not the standard library's: its TCP "
            "connections are recorded by the kernel census (wire bytes; rx/tx unknown)"
        )
    if hasattr(os, "sendfile"):
        patches.append(Patch(os, "sendfile", functions.sendfile))
    try:
        from asyncio import base_events, sslproto
    except ImportError:  # pragma: no cover - asyncio is always there on CPython
        pass
    else:
        loop = base_events.BaseEventLoop
        patches.append(Patch(loop, "getaddrinfo", functions.loop_getaddrinfo, lacks(loop, "getaddrinfo")))
        patches.append(
            Patch(
                loop, "create_connection", functions.loop_create_connection, lacks(loop, "create_connection")
            )
        )
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
    patches += _trio_patches() + _uvloop_patches()
    patches += _gevent_socket_patches() + _gevent_tls_patches()
    patches += _pyopenssl_patches() + _twisted_patches() + _twisted_tls_patches()
    patches += _psycopg2_patches() + _psycopg_patches() + _mysqldb_patches()
    patches += _pycurl_patches() + _grpc_patches()
    return patches


# The C drivers (_sources/drivers.py): what each lacks is said once, and it is then left to the
# census (its short connections may be missed, as before).
_DRIVER_LEFT = "that driver's connections are left to the kernel census (a short one may be missed)"


def _psycopg2_patches() -> list[Patch]:
    psycopg2 = drivers.module("psycopg2")
    if psycopg2 is None:
        return []
    return [Patch(psycopg2, "connect", drivers.psycopg2_connect, lacks(psycopg2, "connect"), _DRIVER_LEFT)]


def _psycopg_patches() -> list[Patch]:
    psycopg = drivers.module("psycopg")
    if psycopg is None:
        return []
    sync, not_sync = psycopg.Connection, psycopg.AsyncConnection
    lacking = lacks(psycopg, "connect") + lacks(sync, "connect") + lacks(not_sync, "connect")
    return [
        Patch(sync, "connect", drivers.psycopg_connect, lacking, _DRIVER_LEFT),
        Patch(not_sync, "connect", drivers.psycopg_connect_async, lacking, _DRIVER_LEFT),
        # psycopg.connect is Connection.connect bound at import: bound again to the patched one
        Patch(psycopg, "connect", lambda _orig: psycopg.Connection.connect, lacking, _DRIVER_LEFT),
    ]


def _mysqldb_patches() -> list[Patch]:
    connections = drivers.module("MySQLdb.connections")
    if connections is None:
        return []
    connection = connections.Connection
    return [Patch(connection, "__init__", drivers.mysqldb_init, lacks(connection, "__init__"), _DRIVER_LEFT)]


def _pycurl_patches() -> list[Patch]:
    pycurl = drivers.module("pycurl")
    if pycurl is None:
        return []
    needed = ("CLOSESOCKETFUNCTION", "ACTIVESOCKET", "SCHEME", "EFFECTIVE_URL", "REDIRECT_COUNT")
    lacking = [f"no pycurl.{n}" for n in needed if not hasattr(pycurl, n)]  # (libcurl 7.52+ has them)
    return [Patch(pycurl, "Curl", drivers.curl_class, lacking, _DRIVER_LEFT)]


def _grpc_patches() -> list[Patch]:
    channel_module = drivers.module("grpc._channel")
    if channel_module is None:
        return []
    channel = channel_module.Channel
    lacking = lacks(channel, "__init__", "_close")
    return [
        Patch(channel, "__init__", drivers.grpc_channel_init, lacking, _DRIVER_LEFT),
        Patch(channel, "_close", drivers.grpc_channel_close, lacking, _DRIVER_LEFT),
    ]


def _subclass_patches() -> list[Patch]:
    """Each subclass of the stock socket that exists now (PySocks' socksocket, made at import)
    counts like socket.socket: the wrappers are put under its own methods (sockets.UnderSubclass),
    in the stock class's place among its bases. Its own subclasses inherit them; one made
    during the capture derives from socket.socket as it then is, ours. A change of `__bases__`,
    not of methods: nothing runs per call on the stock class, and the subclass's own methods
    and their super() calls are as they were."""
    stock: Any = sockets._StockSocket
    patches: list[Patch] = []
    for cls in stock.__subclasses__():  # (the classes with the stock one among their own bases)
        under = sockets.under(cls)
        if under is not None:
            patches.append(Rebase(cls, stock, under))
    return patches


def _twisted_patches() -> list[Patch]:
    resolver = twisted_source.resolver_class()
    if resolver is None:
        return []
    lacking = lacks(resolver, "resolveHostName") or never_sets(resolver, "__init__", "_getaddrinfo")
    without = "Twisted's connections get no host (its resolver keeps its own getaddrinfo)"
    return [Patch(resolver, "resolveHostName", twisted_source.resolve_host_name, lacking, without)]


def _twisted_tls_patches() -> list[Patch]:
    protocol = twisted_source.tls_protocol_class()
    if protocol is None:
        return []
    lacking = lacks(protocol, "makeConnection") or never_sets(protocol, "makeConnection", "_tlsConnection")
    without = "Twisted's TLS servers are counted as their ciphertext, with no TLS version"
    return [Patch(protocol, "makeConnection", twisted_source.make_connection, lacking, without)]


def _pyopenssl_patches() -> list[Patch]:
    connection = pyopenssl.connection_class()
    if connection is None:
        return []
    without = "pyOpenSSL's TLS (Twisted, treq) is counted as its ciphertext, with no TLS version"
    lacking = lacks(connection, *pyopenssl.WRAPPED, "get_protocol_version_name", "get_servername")
    return [Patch(connection, name, pyopenssl.MAKERS[name], lacking, without) for name in pyopenssl.WRAPPED]


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


def _uvloop_patches() -> list[Patch]:
    loop = uvloop_source.loop_class()
    if loop is None:
        return []
    patches: list[Patch] = [
        Override(loop, name, uvloop_source.with_factory(side, once))
        for name, (side, once) in uvloop_source.FACTORIES.items()
        if hasattr(loop, name)
    ]
    if hasattr(loop, "start_tls"):
        patches.append(Override(loop, "start_tls", uvloop_source.start_tls))
    return patches


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


class _LateImports:
    """On sys.meta_path while capturing: a module with patches of its own (trio, gevent's),
    imported now, gets them as soon as it has run, as if it had been imported before."""

    PATCHES = {
        "trio": _trio_patches,
        "gevent._socket3": _gevent_socket_patches,
        "gevent.ssl": _gevent_tls_patches,
        "uvloop": _uvloop_patches,
        "OpenSSL.SSL": _pyopenssl_patches,
        "twisted.internet._resolver": _twisted_patches,
        "twisted.protocols.tls": _twisted_tls_patches,
        "psycopg2": _psycopg2_patches,
        "psycopg": _psycopg_patches,
        "MySQLdb.connections": _mysqldb_patches,
        "pycurl": _pycurl_patches,
        "grpc._channel": _grpc_patches,
    }

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if "uwsgi" in sys.modules:  # (a program run by uWSGI, which forks in C: see _lifecycle)
            _lifecycle.told_by_uwsgi()
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
    """A late import's patches, all or none (and said once), while a capture is on."""
    with _state.lock:
        if not _installed or _late_imports not in sys.meta_path:
            return
        made: list[Patch] = []
        for patch in patches():
            try:
                patch.install()
            except Exception as exc:
                while made:
                    made.pop().remove()
                _tell(f"could not replace {_name(patch.owner)}.{patch.name} ({type(exc).__name__}: {exc})")
                return
            made.append(patch)
        _installed.extend(made)


_late_imports = _LateImports()


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


def install() -> None:
    """Put every patch in place (idempotent; call with _state.lock held)."""
    if _installed:
        census.start()  # a forked child's patches came with it, its census did not
        return
    reducer = _stock_socket_reducer()
    if reducer is not None:
        _register_reducers(reducer)
    sockets.count_nothing_on_stock_sockets()
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
    sys.meta_path.insert(0, _late_imports)
    census.start()


def uninstall() -> None:
    """Restore every original, in reverse order (call with _state.lock held)."""
    census.stop()
    while _late_imports in sys.meta_path:
        sys.meta_path.remove(_late_imports)
    while _installed:
        _installed.pop().remove()
