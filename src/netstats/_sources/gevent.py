"""gevent's sockets while a capture is active (with or without `monkey.patch_all()`).

gevent's socket class wraps a C socket (`self._sock`, of the class its `_gevent_sock_class`
names) and calls that object's methods for every connect, read, write and close. gevent's
class stays in place (its I/O is cooperative); while capturing, the C socket's class is one of
netstats': the per-call wrappers of sockets.py and the same two counting modes, with the C
socket's own close and detach. gevent accepts a bare descriptor (`_accept()`) and wraps it in a
new socket at once (its accept(), its StreamServer): the C socket made for that descriptor on
the same thread is the accepted connection.

gevent's TLS (gevent.ssl.SSLSocket) makes a C socket of its own for the same descriptor, then
detaches the plain one: that C socket is of a counting class too, so the connection goes on
through it (like dup()). OpenSSL does the I/O on the descriptor in C; the SSLSocket's read(),
write() and send() count the plaintext, and the C socket's ciphertext counts apart.
"""

from __future__ import annotations

import _socket
import sys
import threading
import weakref
from typing import Any

from .. import _engine
from .sockets import _Counting, _Lifecycle

_C: Any = _socket.socket
_close, _detach, _stock_accept, stock_del = _C.close, _C.detach, _C._accept, _C.__del__
_accepting = threading.local()  # .fd: the descriptor this thread's last _accept() returned


def socket_class() -> Any:
    """gevent's socket class if gevent's socket module is imported, else None."""
    module = sys.modules.get("gevent._socket3")
    return getattr(module, "socket", None)


def ssl_socket_class() -> Any:
    """gevent's SSLSocket if gevent.ssl is imported and has the C socket class this knows, else None."""
    module = sys.modules.get("gevent.ssl")
    if getattr(module, "_contextawaresock", None) is None:
        return None
    return getattr(module, "SSLSocket", None)


class _CLifecycle:
    """Close and detach of a C socket object (gevent's), ahead of _Lifecycle's (socket.py's)."""

    __slots__ = ()
    _netstats_counts: Any

    def _accept(self) -> tuple[int, Any]:
        fd, address = _stock_accept(self)
        _accepting.fd = fd
        return fd, address

    def close(self) -> None:
        c = self._netstats_counts
        if c is not None and c.conn.closed is None:
            _engine.finish(c.conn, self, True)
        _close(self)

    def detach(self) -> int:
        c = self._netstats_counts
        if c is not None:
            _engine.finish(c.conn, self)  # the descriptor leaves this object: its record ends
        return _detach(self)  # type: ignore[no-any-return]

    def __del__(self) -> None:
        c = self._netstats_counts
        if c is not None and c.conn.closed is None:
            _engine.finish(c.conn, self, True)
        stock_del(self)


_made: dict[Any, Any] = {}


def counting_class(original: Any) -> Any:
    """The class of gevent's C sockets while capturing: counts like socket.socket (made once)."""
    if original in _made:
        return _made[original]
    if issubclass(original, _Lifecycle):
        # Made from ours while a capture was on (gevent.ssl imported during one): it counts
        # already; its own slots keep it from taking a twin's class, so it stays wrapped.
        class Wrapped(original):  # type: ignore[misc,valid-type]
            __slots__ = ()
            _kernel_twin: Any = None
            _python_twin: Any = None

        Wrapped.__module__, Wrapped.__qualname__, Wrapped.__name__ = (
            original.__module__,
            original.__qualname__,
            original.__name__,
        )
        _made[original] = _made[Wrapped] = Wrapped
        return Wrapped

    class KernelCounted(_CLifecycle, _Lifecycle, original):  # type: ignore[misc,valid-type]
        __slots__ = ("_netstats_counts",)
        _kernel_twin: Any = None
        _python_twin: Any = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._netstats_counts = None
            original.__init__(self, *args, **kwargs)  # (family, type, proto, fileno, ...)
            fileno = kwargs.get("fileno", args[3] if len(args) > 3 else None)
            if fileno is None:
                return
            accepted, _accepting.fd = getattr(_accepting, "fd", None), None
            if fileno == accepted:
                _engine.accepted(self)  # recorded if a capture wants accepted connections
            elif _engine.any_shared():
                _engine.another_descriptor(self)

    class Counting(_Counting, KernelCounted):
        __slots__ = ()
        _kernel_twin = KernelCounted
        _python_twin = None

    KernelCounted._python_twin = Counting
    for cls in (KernelCounted, Counting):
        cls.__module__, cls.__qualname__, cls.__name__ = (
            original.__module__,
            original.__qualname__,
            original.__name__,
        )
    _made[original] = Counting
    _made[Counting] = Counting
    return Counting


# ---- gevent.ssl.SSLSocket -------------------------------------------------------------------


def tls_sock_class(original: Any) -> Any:
    """SSLSocket._gevent_sock_class: gevent's C socket for TLS, of a counting class."""
    made = counting_class(sys.modules["gevent.ssl"]._contextawaresock)

    def _gevent_sock_class(self: Any, family: int, type: int, proto: int, fileno: Any) -> Any:
        return made(family, type, proto, fileno, weakref.ref(self))  # as gevent's own does

    _gevent_sock_class.__wrapped__ = original  # type: ignore[attr-defined]
    return _gevent_sock_class


def tls_init(original: Any) -> Any:
    """SSLSocket.__init__, then the plaintext counts for the connection under it."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _link(self)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return __init__


@_engine.guarded
def _link(tls_sock: Any) -> None:
    inner = getattr(tls_sock, "_sock", None)
    c = getattr(inner, "_netstats_counts", None)
    if c is None or c.conn is not c or c.closed is not None:
        return  # not captured, or already linked
    _engine.link_tls(c, inner, tls_sock)
    if tls_sock._sslobj is not None and tls_sock.version() is not None:
        _engine.tls_established(c, tls_sock)


def tls_handshake(original: Any) -> Any:
    def do_handshake(self: Any) -> None:
        original(self)
        c = getattr(self, "_netstats_counts", None)
        if c is not None:
            _engine.tls_established(c, self)

    do_handshake.__wrapped__ = original  # type: ignore[attr-defined]
    return do_handshake


def _count(n: Any) -> int:
    return n if n.__class__ is int else len(n)  # type: ignore[no-any-return]


def tls_read(original: Any) -> Any:
    """SSLSocket.read (recv and recv_into go through it): the plaintext read."""

    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        c = getattr(self, "_netstats_counts", None)
        if c is not None and result:
            c.add_read(_count(result))
        return result

    read.__wrapped__ = original  # type: ignore[attr-defined]
    return read


def tls_write(original: Any) -> Any:
    """SSLSocket.write and send (sendall goes through send): the plaintext written. Before TLS
    is on (or after unwrap), send() is the C socket's, which counts it itself."""

    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        tls = self._sslobj is not None
        n = original(self, *args, **kwargs)
        c = getattr(self, "_netstats_counts", None)
        if c is not None and n and tls:
            c.add_write(n)
        return n

    write.__wrapped__ = original  # type: ignore[attr-defined]
    return write
