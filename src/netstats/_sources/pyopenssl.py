"""pyOpenSSL's `OpenSSL.SSL.Connection` while a capture is active (Twisted's and treq's TLS).

pyOpenSSL drives OpenSSL through cffi: its Connection is a Python class whose methods netstats
wraps, never importing OpenSSL itself (_patch.py patches the class once the module is imported).

- Socket-backed (`Connection(context, sock)`): OpenSSL reads and writes the ciphertext on the
  descriptor, out of Python's sight. At the handshake or the first call that moves data, the
  Connection is linked to the captured socket under it: the plaintext counts into the socket's
  connection, and the socket's own counts go to a StreamCounts (as for asyncio's TLS).
- Memory-BIO (`Connection(context, None)`, Twisted's TLSMemoryBIOProtocol): the caller moves
  the ciphertext itself (bio_read/bio_write, then the socket). Twisted's protocol links it to its
  transport's socket (_sources/twisted.py, client and server). Otherwise a client's first
  handshake flight, taken by bio_read, waits for its socket (see _handshakes.py): the new TCP
  connection whose first write is that flight is linked to it.

send/sendall/write count what they were given, recv/recv_into/read what they return (a peek,
MSG_PEEK, is not a read). `tls` is the negotiated version, `host` the name sent in the SNI
extension (when it is a name).
"""

from __future__ import annotations

import socket as _socketmod
from typing import Any

from .. import _engine, _handshakes
from .sockets import nbytes

_PEEK = int(_socketmod.MSG_PEEK)
_len = len
WRAPPED = ("__init__", "send", "write", "sendall", "recv", "read", "recv_into", "bio_read", "do_handshake")


def connection_class() -> Any:
    """pyOpenSSL's Connection class if OpenSSL.SSL is imported, else None."""
    import sys

    module = sys.modules.get("OpenSSL.SSL")
    return getattr(module, "Connection", None)


class _Negotiated:
    """What _engine.tls_established reads of a TLS object, from a pyOpenSSL Connection."""

    def __init__(self, tls_obj: Any) -> None:
        self._obj = tls_obj
        name = tls_obj.get_servername()
        self.server_hostname = name.decode("ascii", "replace") if isinstance(name, bytes) else None
        self.session_reused = None  # pyOpenSSL does not say: tls_resumed stays unknown

    def version(self) -> str | None:
        version = self._obj.get_protocol_version_name()
        return version if isinstance(version, str) and version.startswith(("TLS", "SSL", "DTLS")) else None


@_engine.guarded
def _link(tls_obj: Any) -> Any:
    """A socket-backed Connection not linked yet: link it to its socket's live connection."""
    sock = tls_obj.__dict__.get("_socket")
    c = getattr(sock, "_netstats_counts", None) if sock is not None else None
    if c is None or c.conn is not c or c.closed is not None:
        return None  # not a captured socket (or TLS already runs over it)
    _engine.link_tls(c, sock, tls_obj)
    return c


@_engine.guarded
def _established(conn: Any, tls_obj: Any) -> None:
    negotiated = _Negotiated(tls_obj)
    if conn.side == "server":
        negotiated.server_hostname = None  # (the name the client asked for, as ssl's server side)
    _engine.tls_established(conn, negotiated)


def _counts(self: Any) -> Any:
    c = self.__dict__.get("_netstats_counts")
    if c is None and self.__dict__.get("_socket") is not None:
        c = _link(self)
    return c


def init(original: Any) -> Any:
    def __init__(self: Any, context: Any, socket: Any = None) -> None:
        original(self, context, socket)
        self._netstats_counts = None

    return __init__


def _write(original: Any) -> Any:
    def send(self: Any, buf: Any, flags: int = 0) -> int:
        n: int = original(self, buf, flags)
        c = _counts(self)
        if c is not None and n:
            c.add_write(n)
            if c.tls is None:
                _established(c, self)
        return n

    return send


def sendall(original: Any) -> Any:
    def sendall(self: Any, buf: Any, flags: int = 0) -> int:
        result: int = original(self, buf, flags)
        c = _counts(self)
        if c is not None:
            n = nbytes(buf) if not isinstance(buf, str) else _len(buf.encode("utf-8"))
            if n:
                c.add_write(n)
                if c.tls is None:
                    _established(c, self)
        return result

    return sendall


def _read(original: Any) -> Any:
    def recv(self: Any, bufsiz: int, flags: int | None = None) -> bytes:
        data: bytes = original(self, bufsiz, flags)
        c = _counts(self)
        if c is not None and data and not (flags and flags & _PEEK):
            c.add_read(_len(data))
            if c.tls is None:
                _established(c, self)
        return data

    return recv


def recv_into(original: Any) -> Any:
    def recv_into(self: Any, buffer: Any, nbytes: int | None = None, flags: int | None = None) -> int:
        n: int = original(self, buffer, nbytes, flags)
        c = _counts(self)
        if c is not None and n and not (flags and flags & _PEEK):
            c.add_read(n)
            if c.tls is None:
                _established(c, self)
        return n

    return recv_into


def bio_read(original: Any) -> Any:
    def bio_read(self: Any, bufsiz: int) -> bytes:
        data: bytes = original(self, bufsiz)
        d = self.__dict__
        if data and "_netstats_counts" in d and d["_netstats_counts"] is None and "_netstats_flight" not in d:
            d["_netstats_flight"] = True  # the first flight only: a client's ClientHello
            _handshakes.waiting(self, _len(data))
        return data

    return bio_read


def do_handshake(original: Any) -> Any:
    def do_handshake(self: Any) -> None:
        original(self)
        c = _counts(self)
        if c is not None:
            _established(c, self)

    return do_handshake


MAKERS = {
    "__init__": init,
    "send": _write,
    "write": _write,
    "sendall": sendall,
    "recv": _read,
    "read": _read,
    "recv_into": recv_into,
    "bio_read": bio_read,
    "do_handshake": do_handshake,
}
