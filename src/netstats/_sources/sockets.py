"""`socket.socket` while a capture is active: the per-call wrappers (see __init__.py's contract).

`self._netstats_counts` is None (not captured), the socket's Connection, or a StreamCounts
(asyncio-style TLS: the socket's ciphertext, while the TLS object counts the plaintext).
"""

from __future__ import annotations

import _socket
import _thread
import socket as _socketmod
import threading
import weakref
from typing import Any

from .. import _engine, _state
from . import census

_StockSocket = _socketmod.socket  # the Python class; kept even while socket.socket is ours
_C: Any = _socket.socket  # the C type, whose methods the wrappers call directly
_send, _sendall, _sendto = _C.send, _C.sendall, _C.sendto
_recv, _recv_into, _recvfrom, _recvfrom_into = _C.recv, _C.recv_into, _C.recvfrom, _C.recvfrom_into
_sendmsg: Any = getattr(_C, "sendmsg", None)
_recvmsg: Any = getattr(_C, "recvmsg", None)
_recvmsg_into: Any = getattr(_C, "recvmsg_into", None)
_connect, _connect_ex, _getsockopt, _stock_shutdown = _C.connect, _C.connect_ex, _C.getsockopt, _C.shutdown
stock_del = _C.__del__
_stock: Any = _StockSocket
_stock_accept, _stock_detach = _stock.accept, _stock.detach
_stock_real_close: Any = getattr(_stock, "_real_close", None)  # a Python without it: see _patch.py
_SOL_SOCKET, _SO_ERROR = _socketmod.SOL_SOCKET, _socketmod.SO_ERROR
_PEEK = int(_socketmod.MSG_PEEK)  # a peek is not a read (a plain int: an IntFlag & costs a call)
_len = len
_threads: Any = getattr(_thread, "_count", lambda: threading.active_count() - 1)  # besides the main one


def nbytes(data: Any) -> int:
    """The length in bytes of what sendall() was given (bytes, bytearray, or any buffer)."""
    t = data.__class__
    if t is bytes or t is bytearray:
        return _len(data)
    with memoryview(data) as view:
        return view.nbytes


class _SocketMeta(type):
    """`isinstance(s, socket.socket)` stays true for stock sockets while ours is installed."""

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, _StockSocket)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, _StockSocket)


class _Lifecycle:
    """Connect, accept, close: what every captured socket needs, with or without wrappers."""

    __slots__ = ()
    _netstats_counts: Any

    def connect(self, address: Any) -> None:
        live = _state.active or self._netstats_counts is not None
        c = _engine.begin_connect(self, address) if live else None
        if c is None:
            return _connect(self, address)  # type: ignore[no-any-return]
        try:
            _connect(self, address)
        except BaseException as exc:
            _engine.connect_raised(c, self, exc)
            raise
        _engine.connect_done(c, self)

    def connect_ex(self, address: Any) -> int:
        live = _state.active or self._netstats_counts is not None
        c = _engine.begin_connect(self, address) if live else None
        if c is None:
            return _connect_ex(self, address)  # type: ignore[no-any-return]
        try:
            code: int = _connect_ex(self, address)
        except BaseException as exc:
            _engine.connect_raised(c, self, exc)
            raise
        _engine.connect_result(c, self, code)
        return code

    def getsockopt(self, *args: Any) -> Any:
        value = _getsockopt(self, *args)
        c = self._netstats_counts
        # asyncio learns how a non-blocking connect ended from SO_ERROR.
        if c is not None and c.conn.connected is None and args[:2] == (_SOL_SOCKET, _SO_ERROR):
            _engine.connect_result(c.conn, self, value)
        return value

    def accept(self) -> tuple[Any, Any]:
        sock, address = _stock_accept(self)  # type: ignore[arg-type]
        if isinstance(sock, _Lifecycle):
            _engine.accepted(sock)  # recorded if a capture wants accepted connections, else counted
        return sock, address

    def shutdown(self, how: int) -> None:
        c = self._netstats_counts
        if c is not None:
            _engine.shutting_down(c.conn, self)
        _stock_shutdown(self, how)

    def detach(self) -> int:
        c = self._netstats_counts
        if c is not None and not census.hand_on(c.conn, self):  # the kernel counts on (census)
            _engine.finish(c.conn, self)  # the descriptor leaves this object: its record ends
        return _stock_detach(self)  # type: ignore[arg-type,no-any-return]

    def _real_close(self, _ss: Any = _C) -> None:
        c = self._netstats_counts
        # Another thread may be inside a call on this socket (a recv blocked across close()),
        # which keeps the kernel socket: the census follows it then. (1: the census's thread.)
        if c is not None and _threads() > 1 and census.close_held(c.conn, self, _stock_real_close, _ss):
            return
        if c is not None:
            _engine.finish(c.conn, self, True)  # (once: a finished record stays as it is)
        _stock_real_close(self, _ss)  # type: ignore[arg-type]

    def __del__(self) -> None:
        c = self._netstats_counts
        if c is not None and c.conn.closed is None:
            _engine.finish(c.conn, self, True)
        stock_del(self)  # type: ignore[arg-type]


class _Counting(_Lifecycle):
    """The per-call wrappers, shared by captured sockets and registered stock sockets.

    Each calls the stock C method, then counts what it says moved. Methods that an unconnected
    UDP socket uses (sendto, sendmsg, recvfrom...) open its record at the first datagram.
    """

    __slots__ = ()

    # -- writes
    def send(self, data: Any, flags: int = 0) -> int:
        n: int = _send(self, data, flags)
        c = self._netstats_counts
        if c is not None and n:
            c.add_write(n)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            _sendall(self, data, flags)
        except BaseException:
            c = self._netstats_counts
            if c is not None:
                _engine.sendall_failed(c, self)  # part may have gone: ask the kernel how much
            raise
        c = self._netstats_counts
        if c is not None:
            n = nbytes(data)
            if n:
                c.add_write(n)

    def sendto(self, *args: Any) -> int:
        n: int = _sendto(self, *args)
        c = self._netstats_counts or _engine.datagram(self)
        if c is not None and n:
            c.add_write(n)
        return n

    if _sendmsg is not None:

        def sendmsg(self, *args: Any) -> int:
            n: int = _sendmsg(self, *args)
            c = self._netstats_counts or _engine.datagram(self)
            if c is not None and n:
                c.add_write(n)
            return n

    # -- reads (a peek, MSG_PEEK, leaves the data in place: not a read)
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data: bytes = _recv(self, bufsize, flags)
        c = self._netstats_counts
        if c is not None and data and not flags & _PEEK:
            c.add_read(_len(data))
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n: int = _recv_into(self, buffer, nbytes, flags)
        c = self._netstats_counts
        if c is not None and n and not flags & _PEEK:
            c.add_read(n)
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        result = _recvfrom(self, bufsize, flags)
        c = self._netstats_counts or _engine.datagram(self)
        if c is not None and result[0] and not flags & _PEEK:
            c.add_read(_len(result[0]))
        return result  # type: ignore[no-any-return]

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        result = _recvfrom_into(self, buffer, nbytes, flags)
        c = self._netstats_counts or _engine.datagram(self)
        if c is not None and result[0] and not flags & _PEEK:
            c.add_read(result[0])
        return result  # type: ignore[no-any-return]

    if _recvmsg is not None:

        def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> tuple[bytes, Any, int, Any]:
            result = _recvmsg(self, bufsize, ancbufsize, flags)
            c = self._netstats_counts or _engine.datagram(self)
            if c is not None and result[0] and not flags & _PEEK:
                c.add_read(_len(result[0]))
            return result  # type: ignore[no-any-return]

    if _recvmsg_into is not None:

        def recvmsg_into(
            self, buffers: Any, ancbufsize: int = 0, flags: int = 0
        ) -> tuple[int, Any, int, Any]:
            result = _recvmsg_into(self, buffers, ancbufsize, flags)
            c = self._netstats_counts or _engine.datagram(self)
            if c is not None and result[0] and not flags & _PEEK:
                c.add_read(result[0])
            return result  # type: ignore[no-any-return]


class KernelCountedSocket(_Lifecycle, _StockSocket, metaclass=_SocketMeta):
    """A captured TCP socket whose bytes the kernel counts (see _kernel.py): no wrappers at all.

    A CountingSocket becomes one (same layout, `__class__` assignment, by the engine through
    `_kernel_twin`) once its connection is known to need no per-call work: plain TCP, Linux,
    nobody listening for read/write events; and back again through `_python_twin`.
    """

    __slots__ = ("_netstats_counts",)
    _kernel_twin: Any = None
    _python_twin: Any = None  # CountingSocket, set below

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None) -> None:
        self._netstats_counts = None
        _StockSocket.__init__(self, family, type, proto, fileno)
        if fileno is not None and _engine.any_shared():  # dup(), fromfd(), accept()...
            _engine.another_descriptor(self)


class CountingSocket(_Counting, KernelCountedSocket):
    """What `socket.socket` is while a capture is active."""

    __slots__ = ()
    _kernel_twin = KernelCountedSocket
    _python_twin = None


KernelCountedSocket._python_twin = CountingSocket


class UnderSubclass(_Counting, _StockSocket):
    """Put in the stock class's place among the bases of each subclass of it that exists when a
    capture starts (PySocks' socksocket), until the last one stops (_patch.Rebase): the
    subclass's own methods still come first, and their super() calls reach the wrappers.

    It adds no slot (a base of the same layout is the only kind `__bases__` takes), so
    `_netstats_counts` is kept in the instance's dictionary, or read as the stock class's None.
    Its instances stay wrapped: their class is the program's, never changed for a twin.
    """

    __slots__ = ()

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None) -> None:
        _StockSocket.__init__(self, family, type, proto, fileno)
        if fileno is not None and _engine.any_shared():  # dup(), fromfd()...
            _engine.another_descriptor(self)


class UnderSlottedSubclass(UnderSubclass):
    """UnderSubclass for a subclass whose instances have no dictionary (`__slots__`): their
    record lives in the registered sockets' table (below)."""

    __slots__ = ()


def under(cls: type) -> type | None:
    """The class to put under cls in the stock class's place (see UnderSubclass), or None to
    leave cls alone: netstats' own classes, and the ssl module's SSLSocket (its sockets count
    the plaintext: _sources/tls.py; by module, as gevent may have put its own in the name)."""
    if issubclass(cls, _Lifecycle) or any(k.__module__ == "ssl" for k in cls.__mro__):
        return None
    return UnderSubclass if cls.__dictoffset__ else UnderSlottedSubclass


# Registered stock sockets keep their layout (no slot to add): their record lives here,
# keyed by id() and removed by a weakref callback the moment the socket dies.
_registered: dict[int, tuple[Any, weakref.ref[Any]]] = {}


def _get_registered(sock: Any) -> Any:
    entry = _registered.get(id(sock))
    return entry[0] if entry is not None else None


def _set_registered(sock: Any, value: Any) -> None:
    key = id(sock)
    entry = _registered.get(key)
    if entry is not None:
        ref = entry[1]
    else:

        def forget(_ref: Any, key: int = key) -> None:
            _registered.pop(key, None)

        ref = weakref.ref(sock, forget)
    _registered[key] = (value, ref)


class RegisteredSocket(_Counting, _StockSocket):
    """The class a stock socket takes when `netstats.register()` adopts it."""

    __slots__ = ()
    _netstats_counts = property(_get_registered, _set_registered)  # type: ignore[assignment]


UnderSlottedSubclass._netstats_counts = property(_get_registered, _set_registered)  # type: ignore[assignment]


def count_nothing_on_stock_sockets() -> None:
    """A stock socket counts into nothing: a wrapper called on one (bound by a library while
    socket.socket was ours, used after) is then exactly the stock method. Once per process."""
    if "_netstats_counts" not in _StockSocket.__dict__:
        _stock._netstats_counts = None


# Reprs, warnings and tracebacks name the classes as the stock one they stand in for.
for _cls in (KernelCountedSocket, CountingSocket, RegisteredSocket):
    _cls.__module__, _cls.__qualname__, _cls.__name__ = "socket", "socket", "socket"
