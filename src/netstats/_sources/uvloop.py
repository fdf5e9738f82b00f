"""uvloop's TCP connections while a capture is active, client and accepted, plain and TLS.

libuv reads and writes in C, so no Python socket method is ever called and uvloop's compiled
transports cannot be patched. `uvloop.Loop` is a Python subclass of the compiled loop, though:
while capturing, its create_connection, create_server, connect_accepted_socket and start_tls
are overridden on that class (removed again when the last capture stops), and each hands
uvloop the program's protocol factory wrapped so that netstats hears of the transport:

- the factory returns the program's own protocol, unchanged; netstats puts a one-shot
  `connection_made` on that instance, which takes itself off before calling the protocol's own
  (so the program's protocol and transport are the objects it would get; `get_protocol()` is
  the program's protocol). Likewise a one-shot `connection_lost`, to end the record while the
  descriptor is still open. A protocol without an instance dictionary (`__slots__`) is left
  alone: the kernel census finds its connection (wire bytes only).
- plain TCP: the application's bytes are the stream's bytes, so the kernel's counters give
  rx/tx exactly (kernel-counted, read through the transport's descriptor, never held open).
  There is no per-call code to run: a read/write callback gets no "read"/"write" events for such
  a connection, and `reads`/`writes` are None.
- TLS: uvloop's SSLProtocol makes its `ssl.SSLObject` with `SSLContext.wrap_bio`, so it is
  netstats' counting class (_sources/tls.py); linked to the record, it counts the plaintext,
  and read/write events are delivered in both counting modes. Its SSLProtocol closes the
  descriptor a loop turn before the program's protocol hears of the loss, by when the kernel
  may have destroyed the socket: the census follows it by cookie (`census.follow`) and ends
  the record with the kernel's final figures.

A server created while no capture was active is not counted this way (uvloop holds the
program's factory itself); neither are Unix sockets (the kernel counts no bytes for them). A
program that swaps its transport's protocol (`transport.set_protocol`, as a websocket upgrade
does) ends its record when the new protocol's connection is lost only if that protocol came
from a wrapped factory: else the record ends, with its last reading, when the transport object
is collected.
"""

from __future__ import annotations

import _socket
import sys
import weakref
from typing import Any

from .. import _engine, _kernel, _origin, _state
from .._record import Connection, StreamCounts
from . import census
from .tls import CountingSSLObject

_TCP = (_socket.AF_INET, _socket.AF_INET6)
# The Loop method -> the side of the connections its protocol factory's protocols make.
FACTORIES = {
    "create_connection": ("client", True),
    "create_server": ("server", False),
    "connect_accepted_socket": ("server", True),
}


def loop_class() -> Any:
    """uvloop's Loop class if uvloop is imported, else None."""
    return getattr(sys.modules.get("uvloop"), "Loop", None)


def with_factory(side: str, once: bool) -> Any:
    """A Loop method taking a protocol factory, handing uvloop one that tells netstats.
    `once`: the method calls it once (not a server's, per accepted connection)."""

    def make(original: Any) -> Any:
        async def method(self: Any, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
            watched: list[Any] | None = [] if once else None
            # (a server's factory is wrapped under any capture: one wanting servers may come later)
            live = _state.active and callable(protocol_factory)
            factory = _telling(protocol_factory, side, watched) if live else None
            try:
                return await original(self, factory or protocol_factory, *args, **kwargs)
            except BaseException:
                for protocol in watched or ():  # it never connected: the program's protocol as it was
                    _unwatch(protocol)
                raise

        method.__name__ = method.__qualname__ = original.__name__
        method.__doc__ = original.__doc__
        method.__wrapped__ = original  # type: ignore[attr-defined]
        return method

    return make


def start_tls(original: Any) -> Any:
    """Loop.start_tls: the record of the plain transport counts the plaintext from now on."""

    async def start_tls(self: Any, transport: Any, *args: Any, **kwargs: Any) -> Any:
        conn = _before_tls(transport)
        tls_transport = await original(self, transport, *args, **kwargs)
        if conn is not None:
            _after_tls(conn, tls_transport)
        return tls_transport

    start_tls.__doc__ = original.__doc__
    start_tls.__wrapped__ = original  # type: ignore[attr-defined]
    return start_tls


def _telling(protocol_factory: Any, side: str, watched: list[Any] | None) -> Any:
    """The program's factory, its protocols watched while a capture wants their side."""

    def factory() -> Any:
        protocol = protocol_factory()
        live = _state.serving if side == "server" else _state.active
        if live and _watch(protocol, side) and watched is not None:
            watched.append(protocol)
        return protocol

    return factory


# ---- the one-shot hooks on the program's protocol --------------------------------------------


def _instance_dict(protocol: Any) -> dict[str, Any] | None:
    """The protocol's own attributes, where a hook may stand for a moment (never the program's)."""
    try:
        d = object.__getattribute__(protocol, "__dict__")
    except AttributeError:  # __slots__: left alone
        return None
    if not isinstance(d, dict) or "connection_made" in d or "connection_lost" in d:
        return None
    return d


@_engine.guarded
def _watch(protocol: Any, side: str) -> bool:
    """A one-shot connection_made on this protocol instance: it learns the transport, takes
    itself off, then calls the protocol's own."""
    d = _instance_dict(protocol)
    if d is None:
        return False
    own_made = protocol.connection_made
    origin = _origin.where()  # a client's program frames are on the stack now

    def connection_made(transport: Any) -> Any:
        if d.get("connection_made") is connection_made:
            del d["connection_made"]
        _made(protocol, d, transport, side, origin)
        return own_made(transport)

    d["connection_made"] = connection_made
    return True


def _unwatch(protocol: Any) -> None:
    d = _instance_dict_any(protocol)
    if d is not None:
        for name in ("connection_made", "connection_lost"):
            hook = d.get(name)
            if getattr(hook, "__module__", None) == __name__:
                del d[name]


def _instance_dict_any(protocol: Any) -> dict[str, Any] | None:
    try:
        d = object.__getattribute__(protocol, "__dict__")
    except AttributeError:
        return None
    return d if isinstance(d, dict) else None


def _watch_lost(protocol: Any, d: dict[str, Any], conn: Connection, fd: int, transport: Any) -> None:
    """A one-shot connection_lost: the record ends while the descriptor is still open."""
    if "connection_lost" in d:
        return
    own_lost = protocol.connection_lost

    def connection_lost(exc: Any) -> Any:
        if d.get("connection_lost") is connection_lost:
            del d["connection_lost"]
        _lost(conn, fd, transport)
        return own_lost(exc)

    d["connection_lost"] = connection_lost


@_engine.guarded
def _lost(conn: Connection, fd: int, transport: Any) -> None:
    _ended(conn, fd)
    tls_obj = transport.get_extra_info("ssl_object")
    if isinstance(tls_obj, CountingSSLObject) and tls_obj._netstats_counts is conn:
        tls_obj._netstats_counts = StreamCounts(conn)  # final: a later read counts into nothing


def _ended(conn: Connection, fd: int) -> None:
    """The record ends now, unless the census follows it (TLS), which ends it itself with the
    kernel's final figures: uvloop closed the descriptor a loop turn before telling the
    program's protocol, and the kernel may have destroyed the socket meanwhile."""
    cookie = conn._probe.ident if isinstance(conn._probe, _Reading) else None
    if type(cookie) is bytes and census.following(conn, int.from_bytes(cookie, sys.byteorder)):
        return
    _engine.closed_elsewhere(conn, fd)


def _follow_tls(conn: Connection, fd: int) -> None:
    """TLS: the census follows the kernel socket from now on (see _ended)."""
    if isinstance(conn._probe, _Reading):
        census.follow(conn, fd)


# ---- the record ----------------------------------------------------------------------------


class _Reading:
    """The kernel's figures for a uvloop connection, read through its descriptor by a socket
    object made for the read and let go at once (the descriptor stays uvloop's)."""

    __slots__ = ("fd", "ident", "client", "conn")

    def __init__(self, fd: int, ident: Any, client: bool) -> None:
        self.fd, self.ident, self.client = fd, ident, client
        self.conn: weakref.ref[Connection] | None = None

    def __call__(self) -> _kernel.TcpInfo | None:
        conn = self.conn() if self.conn is not None else None
        if conn is None:
            return None
        try:
            sock = _socket.socket(fileno=self.fd)
        except OSError:  # closed meanwhile
            return None
        try:
            addresses = (conn.local, conn.remote) if conn.local and conn.remote else None
            info = _kernel.read(sock, self.client, self.ident, conn._peer_fin, addresses)
        finally:
            sock.detach()  # never closed here
        if info is not None:
            if info.peer_fin:
                conn._peer_fin = True
            if conn._kernel_counted:  # plain TCP: the stream's bytes are the application's
                conn._rx = info.consumed
                conn._tx = info.wire_tx
        return info


def _identity(fd: int) -> Any:
    try:
        sock = _socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return _kernel.identity(sock)
    finally:
        sock.detach()


@_engine.guarded
def _made(protocol: Any, d: dict[str, Any], transport: Any, side: str, origin: Any) -> None:
    raw = transport.get_extra_info("socket")
    if raw is None or raw.family not in _TCP:
        return  # a Unix socket: the kernel counts no bytes for it
    fd = raw.fileno()
    tls_obj = transport.get_extra_info("ssl_object")
    if tls_obj is not None and (not isinstance(tls_obj, CountingSSLObject) or tls_obj._netstats_counts):
        return  # a TLS object made before the capture: the census has its wire bytes
    if tls_obj is None and not _kernel.supported:
        return  # plain TCP with no per-call code and no kernel counters: nothing could count it
    conn = _engine.claim_of(fd)
    if conn is not None:  # a captured socket handed to uvloop (sock=...; aiohttp makes its own)
        conn = _engine.adopted_elsewhere(conn, tls_obj)
    else:
        reading = _Reading(fd, _identity(fd), side == "client")
        conn = _engine.opened_elsewhere(
            side, raw.getsockname(), raw.getpeername(), fd, reading, tls_obj, origin
        )
        if conn is not None:
            reading.conn = weakref.ref(conn)
    if conn is None:
        return
    if tls_obj is not None:
        _follow_tls(conn, fd)
    _watch_lost(protocol, d, conn, fd, transport)
    try:  # if no connection_lost comes (set_protocol): at the latest when the transport goes
        weakref.finalize(transport, _ended, conn, fd).atexit = False
    except TypeError:  # a transport that takes no weak reference
        pass


@_engine.guarded
def _before_tls(transport: Any) -> Connection | None:
    raw = transport.get_extra_info("socket")
    conn = _engine.claim_of(raw.fileno()) if raw is not None else None
    if conn is None or not isinstance(conn._probe, _Reading) or conn.tls is not None:
        return None
    _engine.count_in_python(conn)  # the plain bytes so far, read now; the plaintext from here
    return conn  # type: ignore[no-any-return]


@_engine.guarded
def _after_tls(conn: Connection, tls_transport: Any) -> None:
    tls_obj = tls_transport.get_extra_info("ssl_object")
    if isinstance(tls_obj, CountingSSLObject) and tls_obj._netstats_counts is None:
        _engine.link_elsewhere(conn, tls_obj)
        raw = tls_transport.get_extra_info("socket")
        if raw is not None:
            _follow_tls(conn, raw.fileno())
