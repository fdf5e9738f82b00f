"""The per-call wrappers: the only netstats code that runs on every socket read and write.

What a wrapper may do: call the stock method first, then, if the socket has a record
(`self._ns`), add the byte count to integers and call `_emit` when someone listens.
What it may not do: change an argument, a return value or an exception; catch anything;
allocate; take a lock; look at payload beyond its length. Everything rarer (connect, accept,
close, TLS hand-over) goes to _engine, whose functions never raise.

`self._ns` is None (not captured), a Connection, or a _Tally (asyncio TLS: the socket's
ciphertext, while the TLS object counts the plaintext on the Connection).
"""

from __future__ import annotations

import _socket
import socket as _socketmod
import ssl as _sslmod
import weakref
from typing import Any

from . import _engine

_StockSocket = _socketmod.socket  # the Python class; kept even while socket.socket is ours
_C: Any = _socket.socket  # the C type, whose methods the wrappers call directly
_send, _sendall, _sendto = _C.send, _C.sendall, _C.sendto
_recv, _recv_into, _recvfrom, _recvfrom_into = _C.recv, _C.recv_into, _C.recvfrom, _C.recvfrom_into
_sendmsg: Any = getattr(_C, "sendmsg", None)
_recvmsg: Any = getattr(_C, "recvmsg", None)
_recvmsg_into: Any = getattr(_C, "recvmsg_into", None)
_connect, _connect_ex, _getsockopt = _C.connect, _C.connect_ex, _C.getsockopt
_stock_del = _C.__del__
_stock: Any = _StockSocket
_stock_accept, _stock_detach, _stock_real_close = _stock.accept, _stock.detach, _stock._real_close
_SOL_SOCKET, _SO_ERROR = _socketmod.SOL_SOCKET, _socketmod.SO_ERROR
_len = len


def _nbytes(data: Any) -> int:
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
    _ns: Any

    def connect(self, address: Any) -> None:
        c = _engine.begin_connect(self, address) if _engine.active or self._ns is not None else None
        if c is None:
            return _connect(self, address)  # type: ignore[no-any-return]
        try:
            _connect(self, address)
        except BaseException as exc:
            _engine.connect_raised(c, self, exc)
            raise
        _engine.connect_done(c, self)

    def connect_ex(self, address: Any) -> int:
        c = _engine.begin_connect(self, address) if _engine.active or self._ns is not None else None
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
        c = self._ns
        # asyncio learns how a non-blocking connect ended from SO_ERROR.
        if c is not None and c.conn.connected is None and args[:2] == (_SOL_SOCKET, _SO_ERROR):
            _engine.connect_result(c.conn, self, value)
        return value

    def accept(self) -> tuple[Any, Any]:
        sock, address = _stock_accept(self)  # type: ignore[arg-type]
        if _engine.serving and isinstance(sock, _Lifecycle):
            _engine.accepted(sock)
        return sock, address

    def detach(self) -> int:
        c = self._ns
        if c is not None:
            _engine.finish(c.conn, self)  # the descriptor leaves this object: its record ends
        return _stock_detach(self)  # type: ignore[arg-type,no-any-return]

    def _real_close(self, _ss: Any = _C) -> None:
        c = self._ns
        if c is not None:
            _engine.finish(c.conn, self)
        _stock_real_close(self, _ss)  # type: ignore[arg-type]

    def __del__(self) -> None:
        c = self._ns
        if c is not None:
            _engine.finish(c.conn, self)
        _stock_del(self)  # type: ignore[arg-type]


class _Counting(_Lifecycle):
    """The per-call wrappers, shared by captured sockets and registered stock sockets."""

    __slots__ = ()

    # -- writes
    def send(self, data: Any, flags: int = 0) -> int:
        n: int = _send(self, data, flags)
        c = self._ns
        if c is not None and n:
            c._tx += n
            c._writes += 1
            if c._emit is not None:
                c._emit("write", c, n)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            _sendall(self, data, flags)
        except BaseException:
            c = self._ns
            if c is not None:
                _engine.sendall_failed(c, self)  # part may have gone: ask the kernel how much
            raise
        c = self._ns
        if c is not None:
            n = _nbytes(data)
            if n:
                c._tx += n
                c._writes += 1
                if c._emit is not None:
                    c._emit("write", c, n)

    def sendto(self, *args: Any) -> int:
        n: int = _sendto(self, *args)
        c = self._ns
        if c is None:
            c = _engine.datagram(self)
        if c is not None and n:
            c._tx += n
            c._writes += 1
            if c._emit is not None:
                c._emit("write", c, n)
        return n

    if _sendmsg is not None:

        def sendmsg(self, *args: Any) -> int:
            n: int = _sendmsg(self, *args)
            c = self._ns
            if c is None:
                c = _engine.datagram(self)
            if c is not None and n:
                c._tx += n
                c._writes += 1
                if c._emit is not None:
                    c._emit("write", c, n)
            return n

    # -- reads
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data: bytes = _recv(self, bufsize, flags)
        c = self._ns
        if c is not None:
            n = _len(data)
            if n:
                c._rx += n
                c._reads += 1
                if c._emit is not None:
                    c._emit("read", c, n)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n: int = _recv_into(self, buffer, nbytes, flags)
        c = self._ns
        if c is not None and n:
            c._rx += n
            c._reads += 1
            if c._emit is not None:
                c._emit("read", c, n)
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        result = _recvfrom(self, bufsize, flags)
        c = self._ns
        if c is None:
            c = _engine.datagram(self)
        if c is not None:
            n = _len(result[0])
            if n:
                c._rx += n
                c._reads += 1
                if c._emit is not None:
                    c._emit("read", c, n)
        return result  # type: ignore[no-any-return]

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        result = _recvfrom_into(self, buffer, nbytes, flags)
        c = self._ns
        if c is None:
            c = _engine.datagram(self)
        if c is not None:
            n = result[0]
            if n:
                c._rx += n
                c._reads += 1
                if c._emit is not None:
                    c._emit("read", c, n)
        return result  # type: ignore[no-any-return]

    if _recvmsg is not None:

        def recvmsg(self, *args: Any) -> tuple[bytes, Any, int, Any]:
            result = _recvmsg(self, *args)
            c = self._ns
            if c is None:
                c = _engine.datagram(self)
            if c is not None:
                n = _len(result[0])
                if n:
                    c._rx += n
                    c._reads += 1
                    if c._emit is not None:
                        c._emit("read", c, n)
            return result  # type: ignore[no-any-return]

    if _recvmsg_into is not None:

        def recvmsg_into(self, *args: Any) -> tuple[int, Any, int, Any]:
            result = _recvmsg_into(self, *args)
            c = self._ns
            if c is None:
                c = _engine.datagram(self)
            if c is not None:
                n = result[0]
                if n:
                    c._rx += n
                    c._reads += 1
                    if c._emit is not None:
                        c._emit("read", c, n)
            return result  # type: ignore[no-any-return]


class KernelCountedSocket(_Lifecycle, _StockSocket, metaclass=_SocketMeta):
    """A captured TCP socket whose bytes the kernel counts (see _kernel.py): no wrappers at all.

    A CountingSocket becomes one (same layout, `__class__` assignment) once its connection is
    known to need no per-call work: plain TCP, Linux, nobody listening for read/write events.
    """

    __slots__ = ("_ns",)

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None) -> None:
        self._ns = None
        _StockSocket.__init__(self, family, type, proto, fileno)


class CountingSocket(_Counting, KernelCountedSocket):
    """What `socket.socket` is while a capture is active."""

    __slots__ = ()


_engine.kernel_classes = (CountingSocket, KernelCountedSocket)


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
    _ns = property(_get_registered, _set_registered)  # type: ignore[assignment]


# ---- TLS --------------------------------------------------------------------------------

_WANT = (_sslmod.SSLWantReadError, _sslmod.SSLWantWriteError, BlockingIOError)


class CountingSSLSocket(_sslmod.SSLSocket):
    """SSLContext.sslsocket_class while capturing: counts the plaintext.

    The ciphertext is read and written by OpenSSL on the descriptor, out of Python's sight.
    recv/recv_into go through read() when TLS is on, and sendall through send().
    """

    _ns: Any = None
    _sslobj: Any  # set by ssl.SSLSocket
    _connected: bool

    @classmethod
    def _create(cls, sock: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        conn = _engine.detach_from(sock)
        if conn is None:
            return super()._create(sock, *args, **kwargs)  # type: ignore[misc]
        try:
            self = super()._create(sock, *args, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            if sock.fileno() != -1:  # refused before taking the descriptor
                _engine.attach(conn, sock)
            else:
                _engine.tls_failed(conn, None, exc)
                _engine.finish(conn, None)
            raise
        _engine.attach(conn, self)
        if self._sslobj is not None and self.version() is not None:
            _engine.tls_established(conn, self)
        return self

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except _WANT:
            raise
        except BaseException as exc:
            c = self._ns
            if c is not None:
                _engine.tls_failed(c, None, exc)
            raise
        c = self._ns
        if c is not None:
            _engine.tls_established(c, self)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        result = super().read(len, buffer)
        c = self._ns
        if c is not None:
            n = result if buffer is not None else _len(result)
            if n:
                c._rx += n
                c._reads += 1
                if c._emit is not None:
                    c._emit("read", c, n)
        return result

    def write(self, data: Any) -> int:
        n: int = super().write(data)
        c = self._ns
        if c is not None and n:
            c._tx += n
            c._writes += 1
            if c._emit is not None:
                c._emit("write", c, n)
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        n: int = super().send(data, flags)
        c = self._ns
        if c is not None and n:
            c._tx += n
            c._writes += 1
            if c._emit is not None:
                c._emit("write", c, n)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self._sslobj is not None:
            return super().sendall(data, flags)  # type: ignore[no-any-return] # counted by send()
        super().sendall(data, flags)
        c = self._ns
        n = _nbytes(data)
        if c is not None and n:
            c._tx += n
            c._writes += 1
            if c._emit is not None:
                c._emit("write", c, n)
        return None

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._sslobj is not None:
            return super().recv(buflen, flags)  # counted by read()
        data = super().recv(buflen, flags)
        c = self._ns
        n = _len(data)
        if c is not None and n:
            c._rx += n
            c._reads += 1
            if c._emit is not None:
                c._emit("read", c, n)
        return data

    def recv_into(self, buffer: Any, nbytes: Any = None, flags: int = 0) -> int:
        if self._sslobj is not None:
            return super().recv_into(buffer, nbytes, flags)  # counted by read()
        n: int = super().recv_into(buffer, nbytes, flags)
        c = self._ns
        if c is not None and n:
            c._rx += n
            c._reads += 1
            if c._emit is not None:
                c._emit("read", c, n)
        return n

    def connect(self, addr: Any) -> None:
        c = _engine.begin_connect(self, addr) if _engine.active or self._ns is not None else None
        if c is None:
            return super().connect(addr)
        try:
            super().connect(addr)  # connects, then handshakes (counted by do_handshake)
        except BaseException as exc:
            if self._connected:  # TCP connected, the handshake failed
                _engine.connect_done(c, self)
                _engine.tls_failed(c, self, exc)
            else:
                _engine.connect_raised(c, self, exc)
            raise
        _engine.connect_done(c, self)
        return None

    def connect_ex(self, addr: Any) -> int:
        c = _engine.begin_connect(self, addr) if _engine.active or self._ns is not None else None
        if c is None:
            return super().connect_ex(addr)  # type: ignore[no-any-return]
        try:
            code: int = super().connect_ex(addr)
        except BaseException as exc:
            _engine.tls_failed(c, self, exc)
            raise
        _engine.connect_result(c, self, code)
        return code

    def accept(self) -> tuple[Any, Any]:
        sock: Any
        sock, address = super().accept()
        if _engine.serving and sock._ns is None:
            _engine.accepted(sock)
            if sock._ns is not None and sock.version() is not None:
                _engine.tls_established(sock._ns, sock)
        return sock, address

    def detach(self) -> int:
        c = self._ns
        if c is not None:
            _engine.finish(c.conn, self)
        return super().detach()

    def _real_close(self) -> None:
        c = self._ns
        if c is not None:
            _engine.finish(c.conn, self)
        super()._real_close()  # type: ignore[misc]

    def __del__(self) -> None:
        c = self._ns
        if c is not None:
            _engine.finish(c.conn, self)
        _stock_del(self)


class CountingSSLObject(_sslmod.SSLObject):
    """SSLContext.sslobject_class while capturing (asyncio TLS, anyio): counts the plaintext."""

    _ns: Any = None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        result = super().read(len, buffer)
        c = self._ns
        if c is not None:
            n = result if buffer is not None else _len(result)
            if n:
                c._rx += n
                c._reads += 1
                if c._emit is not None:
                    c._emit("read", c, n)
        return result

    def write(self, data: Any) -> int:
        n: int = super().write(data)
        c = self._ns
        if c is not None and n:
            c._tx += n
            c._writes += 1
            if c._emit is not None:
                c._emit("write", c, n)
        return n

    def do_handshake(self) -> None:
        outgoing = self.__dict__.get("_outgoing")
        before = outgoing.pending if outgoing is not None else 0
        try:
            super().do_handshake()
        except _WANT:
            if self._ns is None and before == 0 and outgoing is not None and not self.server_side:
                _engine.tls_output_pending(self, outgoing.pending)
            raise
        except BaseException as exc:
            if self._ns is not None:
                _engine.tls_failed(self._ns, None, exc)
            raise
        if self._ns is not None:
            _engine.tls_established(self._ns, self)

    @classmethod
    def _create(cls, incoming: Any, outgoing: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        self._outgoing = outgoing  # to see the size of the first handshake flight
        return self


# Reprs, warnings and tracebacks name the classes as the stock ones they stand in for.
for _cls, _module, _name in (
    (KernelCountedSocket, "socket", "socket"),
    (CountingSocket, "socket", "socket"),
    (RegisteredSocket, "socket", "socket"),
    (CountingSSLSocket, "ssl", "SSLSocket"),
    (CountingSSLObject, "ssl", "SSLObject"),
):
    _cls.__module__, _cls.__qualname__, _cls.__name__ = _module, _name, _name
