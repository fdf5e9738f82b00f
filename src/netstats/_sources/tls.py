"""The ssl module's TLS objects while a capture is active: the plaintext, the negotiated version.

- `CountingSSLSocket` (SSLContext.sslsocket_class): OpenSSL reads and writes the ciphertext on
  the descriptor, out of Python's sight; read(), write() and send() count the plaintext.
  recv/recv_into go through read() once TLS is on, and sendall through send().
- `CountingSSLObject` (SSLContext.sslobject_class): the memory-BIO TLS of asyncio and anyio;
  its socket counts the ciphertext into a StreamCounts once the two are linked (by asyncio's
  protocol, or by matching its first handshake flight: see _handshakes.py).
- `connection_made`: asyncio's SSLProtocol, wrapped to link its TLS object to the socket.

The per-call wrappers here keep the contract in __init__.py. The stock internals they rely on
(SSLSocket._create setting _sslobj and _connected, SSLObject._create, asyncio's
SSLProtocol._sslobj) are checked by _patch.py before either class is put in place.
"""

from __future__ import annotations

import _socket
import ssl as _sslmod
import threading
from typing import Any

from .. import _engine, _handshakes, _state
from .sockets import nbytes, stock_del

_WANT = (_sslmod.SSLWantReadError, _sslmod.SSLWantWriteError, BlockingIOError)
_PEEK = _socket.MSG_PEEK  # before TLS starts (or after unwrap()), a peek is not a read
_len = len
_flights_waiting = _handshakes._waiting  # (the same deque, never rebound: a truth test per send)


class _Plaintext:
    """read() and write() of both TLS classes: the plaintext, which is what the application moved."""

    _netstats_counts: Any = None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        result = super().read(len, buffer)  # type: ignore[misc]
        c = self._netstats_counts
        if c is not None and result:
            c.add_read(result if buffer is not None else _len(result))
        return result

    def write(self, data: Any) -> int:
        n: int = super().write(data)  # type: ignore[misc]
        c = self._netstats_counts
        if c is not None and n:
            c.add_write(n)
        return n


# The connection whose socket SSLSocket._create is wrapping, in this thread (see do_handshake).
_wrapping = threading.local()


class CountingSSLSocket(_Plaintext, _sslmod.SSLSocket):
    """SSLContext.sslsocket_class while capturing: counts the plaintext."""

    _sslobj: Any  # set by ssl.SSLSocket
    _connected: bool

    @classmethod
    def _create(cls, sock: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        conn = _engine.detach_from(sock)
        if conn is None:
            return super()._create(sock, *args, **kwargs)  # type: ignore[misc]
        _engine.tls_starting(conn, None)
        _wrapping.conn = conn  # (a handshake that fails inside _create ends on the new object)
        try:
            self = super()._create(sock, *args, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            if sock.fileno() != -1:  # refused before taking the descriptor
                _engine.attach(conn, sock)
            else:
                _engine.tls_failed(conn, None, exc)
                _engine.finish(conn, None)
            raise
        finally:
            _wrapping.conn = None
        _engine.attach(conn, self)
        if self._sslobj is not None and self.version() is not None:
            _engine.tls_established(conn, self)
        return self

    def do_handshake(self, block: bool = False) -> None:
        c = self._netstats_counts
        if c is not None:
            _engine.tls_starting(c.conn, self)
        try:
            super().do_handshake(block)
        except _WANT:
            raise
        except BaseException as exc:
            c = self._netstats_counts
            if c is None and getattr(_wrapping, "conn", None) is not None:
                # wrap_socket()'s own handshake failed: _create closes this object next, and
                # the connection ends there with the kernel's figures (the handshake's bytes)
                c = _wrapping.conn
                _wrapping.conn = None
                _engine.attach(c, self)
            if c is not None:
                _engine.tls_failed(c, None, exc)
            raise
        c = self._netstats_counts
        if c is not None:
            _engine.tls_established(c, self)

    def send(self, data: Any, flags: int = 0) -> int:
        n: int = super().send(data, flags)  # the SSLObject's write(), not self.write(), once TLS is on
        c = self._netstats_counts
        if c is not None and n:
            c.add_write(n)
            if _flights_waiting:  # TLS inside this TLS (urllib3 through an HTTPS proxy)?
                _engine.link_inner_tls(self, c, n)
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags)  # through send() once TLS is on: counted there
        c = self._netstats_counts
        if c is not None and self._sslobj is None:
            n = nbytes(data)
            if n:
                c.add_write(n)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data = super().recv(buflen, flags)  # through read() once TLS is on: counted there
        c = self._netstats_counts
        if c is not None and data and self._sslobj is None and not flags & _PEEK:
            c.add_read(_len(data))
        return data

    def recv_into(self, buffer: Any, nbytes: Any = None, flags: int = 0) -> int:
        n: int = super().recv_into(buffer, nbytes, flags)  # through read() once TLS is on
        c = self._netstats_counts
        if c is not None and n and self._sslobj is None and not flags & _PEEK:
            c.add_read(n)
        return n

    # -- lifecycle
    def connect(self, addr: Any) -> None:
        live = _state.active or self._netstats_counts is not None
        c = _engine.begin_connect(self, addr) if live else None
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
        live = _state.active or self._netstats_counts is not None
        c = _engine.begin_connect(self, addr) if live else None
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
        if _state.serving and sock._netstats_counts is None:
            _engine.accepted(sock)
            if sock._netstats_counts is not None and sock.version() is not None:
                _engine.tls_established(sock._netstats_counts, sock)
        return sock, address

    def detach(self) -> int:
        c = self._netstats_counts
        if c is not None:
            _engine.finish(c.conn, self)
        return super().detach()

    def _real_close(self) -> None:
        c = self._netstats_counts
        if c is not None:
            _engine.finish(c.conn, self)
        super()._real_close()  # type: ignore[misc]

    def __del__(self) -> None:
        c = self._netstats_counts
        if c is not None:
            _engine.finish(c.conn, self)
        stock_del(self)


class CountingSSLObject(_Plaintext, _sslmod.SSLObject):
    """SSLContext.sslobject_class while capturing (asyncio TLS, anyio): counts the plaintext."""

    def do_handshake(self) -> None:
        outgoing = self.__dict__.get("_netstats_outgoing")
        before = outgoing.pending if outgoing is not None else 0
        try:
            super().do_handshake()
        except _WANT:
            if (
                self._netstats_counts is None
                and before == 0
                and outgoing is not None
                and not self.server_side
            ):
                _handshakes.waiting(self, outgoing.pending)
            raise
        except BaseException as exc:
            if self._netstats_counts is not None:
                _engine.tls_failed(self._netstats_counts, None, exc)
            raise
        if self._netstats_counts is not None:
            _engine.tls_established(self._netstats_counts, self)

    @classmethod
    def _create(cls, incoming: Any, outgoing: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        self._netstats_outgoing = outgoing  # to see the size of the first handshake flight
        return self


def connection_made(original: Any) -> Any:
    """asyncio.sslproto.SSLProtocol.connection_made, linking its TLS object to the socket."""

    def connection_made(self: Any, transport: Any) -> None:
        _engine.link_asyncio_protocol(self, transport)
        return original(self, transport)  # type: ignore[no-any-return]

    connection_made.__wrapped__ = original  # type: ignore[attr-defined]
    return connection_made


# Reprs, warnings and tracebacks name the classes as the stock ones they stand in for.
for _cls, _name in ((CountingSSLSocket, "SSLSocket"), (CountingSSLObject, "SSLObject")):
    _cls.__module__, _cls.__qualname__, _cls.__name__ = "ssl", _name, _name
