"""Connection lifecycle: open, connect, accept, close, how a connection is counted, TLS hand-over.

Called by the capture sources (_sources/) at the rare moments of a connection's life, never per
read or write. Every entry point is guarded: an error of netstats is logged to the "netstats"
logger and swallowed, so it can never reach the code being observed.

Two counting modes (see ARCHITECTURE.md): a plain TCP socket that nobody asks read/write
events of is counted by the kernel (its class becomes one without per-call wrappers, and rx/tx
come from TCP_INFO); every other socket is counted by its wrappers. `count_in_kernel` and
`count_in_python` move a connection between the two; the counts never depend on which.
"""

from __future__ import annotations

import _socket
import errno
import functools
import ipaddress
import itertools
import logging
import socket as _socketmod
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from . import _handshakes, _kernel, _names, _origin, _state, _tags
from ._record import Connection, StreamCounts

log = logging.getLogger("netstats")

_ids = itertools.count(1)
_by_fd: dict[int, weakref.ref[Any]] = {}  # fd -> live captured socket (sendfile, asyncio, fork)
# fd -> the live Connection counting what moves on it, from open to finish, TLS hand-over
# included: the kernel census leaves these descriptors alone.
_claims: dict[int, Connection] = {}
_by_identity: dict[Any, Connection] = {}  # kernel socket identity -> its open TCP connection
# id -> a connection whose kernel socket lives on past its descriptor: handed on by detach(), or
# held across close() by another thread's call (hold()); it ends through found_closed()
_handed: dict[int, Connection] = {}
_shared: weakref.WeakSet[Connection] = weakref.WeakSet()  # shared with another process (fork, pickle)
FAMILIES = {_socketmod.AF_INET, _socketmod.AF_INET6, getattr(_socketmod, "AF_UNIX", -1)}
_PENDING = {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR}
_CONNECTED = {0, errno.EISCONN}

F = TypeVar("F", bound=Callable[..., Any])


def guarded(fn: F) -> F:
    """Never let netstats' own error reach the observed code.

    (The few entry points every connection passes through, several times each, have the same
    try/except written in instead: a wrapper's call costs as much as their own work.)"""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            internal_error(fn.__name__)
            return None

    return wrapper  # type: ignore[return-value]


def internal_error(where: str) -> None:
    """Log netstats' own error (in an except block), which the observed code never sees."""
    log.exception("netstats: internal error in %s (the observed code is unaffected)", where)


# ---- telling the watchers -----------------------------------------------------------------


def notify(conn: Connection, event: str) -> None:
    """A lifecycle event ("open", "connect", "close") for every capture watching conn."""
    for watcher in conn._watchers:
        if watcher.callback is not None:  # (three times per connection: skip the empty call)
            watcher._notify(event, conn, None)


def io_listener(watchers: tuple[_state.Watcher, ...]) -> _state.IoListener | None:
    """The function the wrappers call per read/write, or None when nobody listens."""
    if _tags.in_use:  # netstats.tag() has been used: every read and write goes to its labels
        return _tags.with_tags(_listeners(watchers))
    return _listeners(watchers)


def _listeners(watchers: tuple[_state.Watcher, ...]) -> _state.IoListener | None:
    if len(watchers) == 1:  # the usual case, kept short: it runs once per connection
        return watchers[0]._io_listener()
    targets = [f for f in (w._io_listener() for w in watchers) if f is not None]
    if not targets:
        return None
    if len(targets) == 1:
        return targets[0]

    def tell_all(event: str, conn: Connection, nbytes: int) -> None:
        for target in targets:
            target(event, conn, nbytes)

    return tell_all


def refresh(conn: Connection) -> None:
    """A watcher of conn stopped: ask again who listens to its reads and writes."""
    on_io = conn._on_io  # (read once: the connection's own thread may change it meanwhile)
    if isinstance(on_io, _UntilFirstRead):  # waiting for its first read: it stays so
        on_io.listener = io_listener(conn._watchers)
    elif on_io is not _settle_at_first_write:
        conn._on_io = io_listener(conn._watchers)


# ---- opening ----------------------------------------------------------------------------


# The C type's own attributes: plain ints (socket.socket's properties make enums, slowly).
_family_of, _type_of = _socket.socket.family.__get__, _socket.socket.type.__get__
_timeout_of = _socket.socket.timeout.__get__  # None (blocking), seconds, or 0.0 (non-blocking)
# The kernel's addresses, whatever a subclass answers (PySocks' getpeername is the proxied peer).
_peer_of, _local_of = _socket.socket.getpeername, _socket.socket.getsockname
_AF_INET, _AF_UNIX = _socketmod.AF_INET, getattr(_socketmod, "AF_UNIX", -1)


def _transport(sock: Any) -> str | None:
    family = _family_of(sock)
    if family not in FAMILIES:
        return None
    if family == _AF_UNIX:
        return "unix"
    return "udp" if _type_of(sock) & 0xF == _socketmod.SOCK_DGRAM else "tcp"


_ipv4_literals: dict[str, bool] = {}  # address -> whether the kernel writes it so (bounded)


def _is_ipv4_sockaddr(address: Any) -> bool:
    """An (address, port) the kernel would give back unchanged from getpeername()."""
    if type(address) is not tuple or len(address) != 2 or type(address[0]) is not str:
        return False
    host = address[0]
    known = _ipv4_literals.get(host)  # (inet_aton + inet_ntoa cost a microsecond per connection)
    if known is None:
        try:
            known = _socketmod.inet_ntoa(_socketmod.inet_aton(host)) == host
        except OSError:
            known = False
        if len(_ipv4_literals) < 1024:
            _ipv4_literals[host] = known
    return known


def _fd_of(sock: Any) -> int:
    try:
        return int(sock.fileno())
    except Exception:
        return -1


def attach(conn: Connection, sock: Any) -> None:
    """Make sock the object that counts for conn."""
    sock._netstats_counts = conn
    conn._sock = weakref.ref(sock)
    if conn._ident is None and conn.transport == "tcp":
        conn._ident = _kernel.identity(sock)
        if conn._ident is not None:
            _by_identity[conn._ident] = conn
    fd = _fd_of(sock)
    if fd >= 0:
        _by_fd[fd] = conn._sock
        _claims[fd] = conn


def any_shared() -> bool:
    return bool(_by_identity)


@guarded
def another_descriptor(sock: Any) -> None:
    """A socket object made for an existing descriptor (dup, fromfd, socket(fileno=...)): if its
    kernel socket is an open connection's, it counts into that connection, in the same mode."""
    conn = _by_identity.get(_kernel.identity(sock))
    if conn is None or conn.closed is not None:
        return
    if conn._sock is None:
        if _handed.pop(conn.id, None) is conn:  # handed on by detach(): this object takes it back
            conn._probe = None
            twin = _twin(sock, "_kernel_twin")
            if twin is not None:
                sock.__class__ = twin
            attach(conn, sock)
            if conn._on_io is not None:  # someone listens to reads and writes: the wrappers again
                count_in_python(conn)
        return
    sock._netstats_counts = conn
    twin = _twin(sock, "_kernel_twin" if conn._kernel_counted else "_python_twin")
    if twin is not None:
        sock.__class__ = twin
    ref = weakref.ref(sock)
    conn._others = [*(conn._others or ()), ref]
    fd = _fd_of(sock)
    if fd >= 0:
        _by_fd[fd] = ref
        _claims[fd] = conn


def _holders(conn: Connection) -> list[Any]:
    """The open socket objects of conn: the one it reads from first, then any others."""
    refs = [conn._sock, *(conn._others or ())] if conn._sock is not None else []
    return [s for s in (r() for r in refs) if s is not None and _fd_of(s) != -1]


def _let_go(conn: Connection, sock: Any) -> bool:
    """sock's descriptor closes: False if it was conn's last, else conn goes on through another."""
    if not conn._others:
        return False
    others = [s for s in _holders(conn) if s is not sock]
    if not others:
        return False
    conn._sock = weakref.ref(others[0])
    conn._others = [weakref.ref(s) for s in others[1:]]
    if getattr(sock, "_netstats_counts", None) is conn:
        sock._netstats_counts = None  # (its __del__ after a detach() is not the connection's end)
    fd = _fd_of(sock)
    heir = next((s for s in others if _fd_of(s) == fd), None)  # (gevent's TLS: the same number)
    if heir is not None:
        _by_fd[fd] = weakref.ref(heir)
        return True
    if fd >= 0 and fd in _by_fd and _by_fd[fd]() is sock:
        del _by_fd[fd]
    if _claims.get(fd) is conn:
        del _claims[fd]
    return True


def detach_from(sock: Any) -> Connection | None:
    """Take sock's live Connection off it (for a hand-over to another object, a TLS socket)."""
    c = getattr(sock, "_netstats_counts", None)
    if c is None or c.conn.closed is not None:
        return None
    count_in_python(c.conn)
    sock._netstats_counts = None
    fd = _fd_of(sock)
    if _by_fd.get(fd) is c.conn._sock:
        del _by_fd[fd]
    return c.conn  # type: ignore[no-any-return]


def _new(side: str, transport: str, watchers: tuple[_state.Watcher, ...]) -> Connection:
    conn = Connection(next(_ids), side, transport)
    conn.origin, conn.caller = _origin.where()
    conn._watchers = watchers
    for watcher in watchers:
        watcher._opened(conn)
    return conn


def open_connection(
    sock: Any, side: str, watchers: tuple[_state.Watcher, ...], remote: Any = None
) -> Connection | None:
    transport = _transport(sock)
    if not _state.same_process():  # forked where no hook ran: the parent's captures are not ours
        watchers = _state.serving if side == "server" else _state.active
    if transport is None or not watchers:
        return None
    conn = _new(side, transport, watchers)
    conn.remote = remote
    if side == "client":  # (an accepted connection's peer was asked for by no name)
        conn.host, conn.dns_time = _names.name_and_time(remote)
    if remote is None or side != "client":  # a connecting client learns its address once connected
        try:
            conn.local = _local_of(sock)
        except OSError:
            pass
    attach(conn, sock)
    # A TCP client settles how it is counted at its first write, which may turn out to be a
    # bare SSLObject's ClientHello (see _handshakes.py).
    tcp_client = transport == "tcp" and side == "client"
    conn._on_io = _settle_at_first_write if tcp_client else io_listener(watchers)
    notify(conn, "open")
    return conn


def begin_connect(sock: Any, address: Any) -> Connection | None:
    """The record a connect() on sock counts into (opened if need be), once the gates let it go.

    A gate's refusal is not guarded, on purpose: it is the user's own configured error, meant
    for the caller. The attempt is recorded like a failed connect; nothing has left the socket.
    """
    try:
        c = sock._netstats_counts
        conn: Connection | None
        if c is not None and c.conn.closed is None:
            conn = c.conn
        else:
            conn = open_connection(sock, "client", _state.active, address)
    except Exception:
        internal_error("begin_connect")
        return None
    if conn is not None and _state.gated:
        for watcher in _state.gated:
            if watcher._gate is not None and watcher in conn._watchers:
                try:
                    watcher._gate(conn)
                except BaseException as exc:
                    _fail(conn, sock, type(exc).__name__)
                    raise
    return conn


def _mark_connected(conn: Connection, sock: Any) -> None:
    if conn.connected is not None:
        return
    conn.connected = time.time()
    asked = conn.remote
    try:
        # An IPv4 address asked for by number is the peer's address: no need to ask the kernel.
        if not (conn.transport == "tcp" and _family_of(sock) == _AF_INET and _is_ipv4_sockaddr(asked)):
            conn.remote = _peer_of(sock)
        conn.local = _local_of(sock)
    except OSError:
        pass
    if conn.host is None and conn.side == "client" and conn.remote != asked:  # (asked: looked up at open)
        conn.host, conn.dns_time = _names.name_and_time(conn.remote)
    notify(conn, "connect")


def _fail(conn: Connection, sock: Any, error_name: str) -> None:
    conn.error = error_name
    _moved_nothing(conn)
    finish(conn, sock)
    if sock is not None and sock._netstats_counts is conn:
        sock._netstats_counts = None  # a later connect on this socket is a new attempt


def connect_done(conn: Connection, sock: Any) -> None:
    try:
        _mark_connected(conn, sock)
    except Exception:
        internal_error("connect_done")


@guarded
def connect_raised(conn: Connection, sock: Any, exc: BaseException) -> None:
    if isinstance(exc, (BlockingIOError, InterruptedError)):
        return  # non-blocking connect in progress
    if isinstance(exc, OSError) and exc.errno == errno.EISCONN:
        _mark_connected(conn, sock)
        return
    _fail(conn, sock, type(exc).__name__)


@guarded
def connect_result(conn: Connection, sock: Any, code: int) -> None:
    """The errno of connect_ex(), or of SO_ERROR after a non-blocking connect."""
    if code in _CONNECTED:
        _mark_connected(conn, sock)
    elif code not in _PENDING:
        _fail(conn, sock, type(OSError(code, "")).__name__)


@guarded
def accepted(sock: Any) -> None:
    _state.count_accept()  # `netstats run` without --servers says how many it left out
    if not _state.serving:
        return
    try:
        remote = _peer_of(sock)
    except OSError:
        remote = None
    conn = open_connection(sock, "server", _state.serving, remote)
    if conn is not None:
        _mark_connected(conn, sock)
        count_in_kernel(conn, sock)


@guarded
def registered(conn: Connection, sock: Any) -> None:
    """register() adopted a socket that may have moved bytes already: those are not this record's."""
    try:
        conn.remote = _peer_of(sock)
        conn.connected = conn.opened
    except OSError:
        pass
    if conn.transport == "tcp":
        info = _kernel.read(sock, True, conn._ident)
        if info is not None:
            conn._kernel_base = (info.consumed, info.wire_tx)


@guarded
def datagram(sock: Any) -> Any:
    """An unconnected UDP socket's first datagram makes it a Connection."""
    if not _state.active or _type_of(sock) & 0xF != _socketmod.SOCK_DGRAM:
        return None
    return open_connection(sock, "client", _state.active)


@guarded
def lookup_failed(host: Any, kind: int, exc: BaseException) -> None:
    """A name that did not resolve is a connection attempt that failed before it had a socket."""
    watchers = _state.active
    if not watchers:
        return
    conn = _new("client", "udp" if kind == _socketmod.SOCK_DGRAM else "tcp", watchers)
    conn.host = host.decode("idna", "replace") if isinstance(host, bytes) else host
    notify(conn, "open")
    conn.error = type(exc).__name__
    _moved_nothing(conn)
    finish(conn, None)


def _moved_nothing(conn: Connection) -> None:
    """A TCP attempt that never connected carried no stream bytes: its wire bytes are 0, known
    (where the kernel counts them at all); its other kernel figures stay unknown."""
    if conn.transport == "tcp" and conn.connected is None and _kernel.supported:
        conn._final_info = _kernel.NOTHING_MOVED


# ---- how a connection is counted ----------------------------------------------------------


def _twin(sock: Any, name: str) -> Any:
    """The class sock takes in the other counting mode (`_kernel_twin`, `_python_twin`), set on
    netstats' own classes only: a program's subclass of one (made during a capture) is never
    changed into ours, which would drop its own methods; it stays wrapped."""
    return vars(type(sock)).get(name)


def count_in_kernel(conn: Connection, sock: Any) -> None:
    """Drop the per-call wrappers when the kernel's counters can give rx/tx exactly."""
    bare = _twin(sock, "_kernel_twin")
    if (
        bare is not None
        and conn._on_io is None
        and conn.transport == "tcp"
        and getattr(sock, "_netstats_counts", None) is conn
        and _kernel.usable(sock)
    ):
        # No kernel read here: what the wrappers counted so far is what the kernel counted.
        conn._kernel_counted = True
        sock.__class__ = bare
        if conn._others:
            for other in _holders(conn):
                twin = _twin(other, "_kernel_twin")
                if twin is not None:
                    other.__class__ = twin


def count_in_python(conn: Connection) -> None:
    """From now on rx/tx come from the wrappers: TLS starts on this stream (the TLS object counts
    the plaintext), or another process is about to share the kernel socket."""
    if isinstance(conn._on_io, _UntilFirstRead):  # waiting for its first read: it stays wrapped
        conn._on_io.kernel = False
    elif conn._on_io is _kernel_at_next_call:
        conn._on_io = None
    if conn._kernel_counted:
        conn.tcp_info()
        conn._kernel_counted = False
        conn._calls_unseen = True  # (the calls the kernel counted are not in reads/writes)
        for sock in _holders(conn):
            wrapped = _twin(sock, "_python_twin")
            if wrapped is not None:
                sock.__class__ = wrapped


@guarded
def start_tagging() -> None:
    """The first netstats.tag(): every open connection listens for tags from now on, counted
    by its wrappers (the kernel's counters cannot say whose a byte was)."""
    for ref in list(_by_fd.values()):
        sock = ref()
        c = getattr(sock, "_netstats_counts", None) if sock is not None else None
        if c is not None and c.conn.closed is None:
            refresh(c.conn)
            count_in_python(c.conn)


@guarded
def before_sharing(sock: Any = None) -> None:
    """Before fork (every socket) or before a socket is pickled for another process: the
    kernel's counters will include the other process's bytes, so the wrappers count again."""
    socks = [sock] if sock is not None else [ref() for ref in list(_by_fd.values())]
    for s in socks:
        c = getattr(s, "_netstats_counts", None) if s is not None else None
        if c is not None and c.conn.closed is None:
            count_in_python(c.conn)
            _shared.add(c.conn)


def _settle_at_first_write(event: str, conn: Connection, nbytes: int) -> None:
    """A TCP client's one-shot listener: at its first write, settle how it is counted.

    That write may be the ClientHello of a bare SSLObject waiting for its socket (see
    _handshakes.py): then TLS is linked and the bytes move to the stream's counts. Otherwise
    the real listener takes over, or, with nobody listening, the kernel counts from now on.
    """
    try:
        conn._on_io = io_listener(conn._watchers)
        sock = conn._sock() if conn._sock is not None else None
        if conn.connected is None and sock is not None:
            _mark_connected(conn, sock)  # a non-blocking connect whose end nobody asked about
        if event != "write":
            if conn._on_io is not None:
                conn._on_io(event, conn, nbytes)
            return
        if _handshakes.any_waiting() and _link_client_hello(conn, nbytes):
            return
        conn.first_write = time.time()
        if conn._on_io is not None:
            conn._on_io(event, conn, nbytes)
        conn._on_io = _UntilFirstRead(conn._on_io, conn._on_io is None and sock is not None)
    except Exception:
        internal_error("_settle_at_first_write")


# Writes before a first read after which the wait for it stops: the kernel counts from there,
# and the first byte's time is then what the kernel says of it (see _kernel.first_byte_after).
_WRITES_BEFORE_READ = 16


class _UntilFirstRead:
    """A TCP client's listener from its first write to its first read: that read's time gives
    ttfb, then `listener` takes over, or, for a socket the kernel can count (`kernel`), nobody:
    the few calls in between are the only ones that run netstats' code (and the call after that
    read, `_kernel_at_next_call`).

    The kernel alone cannot tell when the first byte came unless it came in the only data
    segment yet (TCP_INFO keeps the last one's time): a response of more is usual. (A plain
    object, not a closure: it holds neither the socket nor itself.)"""

    __slots__ = ("listener", "kernel", "writes")

    def __init__(self, listener: _state.IoListener | None, kernel: bool) -> None:
        self.listener, self.kernel, self.writes = listener, kernel, 0

    def __call__(self, event: str, conn: Connection, nbytes: int) -> None:
        try:
            listener, kernel = self.listener, self.kernel
            if listener is not None:
                listener(event, conn, nbytes)
            if event == "read":
                if conn.first_write is not None and conn.ttfb is None:
                    conn.ttfb = max(0.0, time.time() - conn.first_write)
                if listener is None and kernel and conn._on_io is self:
                    conn._on_io = _kernel_at_next_call
                    return
            else:
                self.writes += 1
                if self.writes < _WRITES_BEFORE_READ:
                    return
            if conn._on_io is self:
                conn._on_io = listener
                sock = conn._sock() if conn._sock is not None else None
                if listener is None and kernel and sock is not None:
                    count_in_kernel(conn, sock)
        except Exception:
            internal_error("_UntilFirstRead")


@guarded
def _kernel_at_next_call(event: str, conn: Connection, nbytes: int) -> None:
    """A TCP client's listener after its first read: the kernel counts from the next call on.

    Not from that read itself: a connection that ends there (one request, one response) is
    cheaper counted by its wrappers, its close reading the kernel without SIOCINQ (one system
    call less) and its class never changed. (One function for all: nothing kept per connection.)
    """
    if conn._on_io is _kernel_at_next_call:
        conn._on_io = None
        sock = conn._sock() if conn._sock is not None else None
        if sock is not None:
            count_in_kernel(conn, sock)


def _link_client_hello(conn: Connection, nbytes: int) -> bool:
    tls_obj = _handshakes.claim(nbytes, lambda obj: obj._netstats_counts is not None)
    if tls_obj is None:
        return False
    sock = conn._sock() if conn._sock is not None else None
    if sock is None or sock._netstats_counts is not conn:
        return False
    # The bytes just counted were ciphertext: move them to the stream's counts.
    conn._tx -= nbytes
    conn._writes -= 1
    stream = link_tls(conn, sock, tls_obj)
    stream._tx += nbytes
    stream._writes += 1
    return True


# ---- closing ----------------------------------------------------------------------------


@guarded
def shutting_down(conn: Connection, sock: Any) -> None:
    """shutdown(): a reading now says whether the peer's FIN is in (a later CLOSE state cannot),
    and the wrappers count from here, so rx stays exact however the connection ends."""
    if conn.transport == "tcp" and conn.closed is None and conn.connected is not None:
        kernel_counted = conn._kernel_counted
        count_in_python(conn)  # (one waiting for its first read stays wrapped too)
        if not kernel_counted:
            conn.tcp_info()


def finish(conn: Connection, sock: Any, closing: bool = False) -> None:
    """The connection ends: freeze its figures, then tell the watchers (once).

    `closing`: sock's descriptor is about to close (not handed on, as by detach())."""
    try:
        if release(conn, sock, closing):
            end(conn, sock)
    except Exception:
        internal_error("finish")


def release(conn: Connection, sock: Any, closing: bool = False) -> bool:
    """All of finish() but the end: the last kernel reading while sock's descriptor is open, and
    the descriptor forgotten. False if conn does not end here (ended already, another descriptor
    goes on, or its kernel socket lives on elsewhere: see hold())."""
    if conn.closed is not None:
        return False
    if _handed and sock is not None and _handed.get(conn.id) is conn:
        return False  # its descriptor was let go already: it ends through found_closed()
    if sock is not None and conn._others and _let_go(conn, sock):
        return False  # another descriptor of the same kernel socket is still open
    if sock is not None and conn.transport == "tcp":
        if conn.connected is None and conn.error is None:
            try:  # a non-blocking connect whose end nobody asked about
                _peer_of(sock)
                _mark_connected(conn, sock)
            except OSError:
                pass
        if conn.connected is not None:
            conn._final_info = conn.tcp_info(closing)  # last kernel read, descriptor still open
    ref = conn._sock
    conn._sock = None
    conn._others = None
    fd = _fd_of(sock) if sock is not None else -1
    if ref is not None and _by_fd.get(fd) is ref:
        del _by_fd[fd]
    if _claims.get(fd) is conn:
        del _claims[fd]
    if conn._ident is not None and _by_identity.get(conn._ident) is conn:
        del _by_identity[conn._ident]
    conn._ident = None  # (nothing reads the kernel for it again: a kept record is smaller)
    return True


def end(conn: Connection, sock: Any) -> None:
    """conn ends now (after release()): closed, and the watchers told."""
    conn.closed = time.time()
    if sock is not None and getattr(sock, "_netstats_counts", None) is conn:
        # The record stays readable through the socket (stats()), but is final: a call still in
        # flight on another thread counts into nothing.
        sock._netstats_counts = StreamCounts(conn)
    for watcher in conn._watchers:
        watcher._closed(conn)
    notify(conn, "close")


# ---- a close() while another thread's call holds the kernel socket ---------------------------


def holdable(conn: Connection, sock: Any) -> int | None:
    """The kernel socket's cookie if conn's end may wait for the kernel to let go of it, should a
    call of another thread hold it past close() (a blocked recv): a connected plain TCP
    connection whose last descriptor is sock's, not shared with another process, its bytes the
    stream's (the kernel's figures then say when every byte the application moved is counted),
    that blocks (a non-blocking socket's calls never wait: asyncio's)."""
    ident = conn._ident  # (SO_COOKIE's 8 bytes; an inode where the kernel has no cookies)
    if (
        type(ident) is bytes
        and _timeout_of(sock) != 0.0
        and conn.transport == "tcp"
        and conn.closed is None
        and conn.connected is not None
        and conn.error is None
        and conn.tls is None
        and conn._tls_phase is None
        and conn._probe is None
        and bool(conn.local)
        and bool(conn.remote)
        and getattr(sock, "_netstats_counts", None) is conn
        and not (conn._others and any(s is not sock for s in _holders(conn)))
        and conn not in _shared
    ):
        return int.from_bytes(ident, sys.byteorder)
    return None


def hold(conn: Connection, probe: Callable[[], _kernel.TcpInfo | None]) -> None:
    """conn's descriptor is closed (release()d) but a call of another thread still holds its
    kernel socket: conn goes on (the wrappers count that call; probe reads the kernel's figures)
    until held_ended()."""
    conn._probe = probe
    _handed[conn.id] = conn


def counted_all(conn: Connection, final: _kernel.TcpInfo) -> bool:
    """Whether conn has counted every byte the kernel's final figures say the application moved
    (a call in flight across close() counts as it returns)."""
    if conn._kernel_counted or final.unread is None:  # (nothing to wait for, or no way to tell)
        return True
    return (
        conn._rx >= final.consumed - conn._kernel_base[0] and conn._tx >= final.wire_tx - conn._kernel_base[1]
    )


@guarded
def held_ended(conn: Connection, sock: Any, final: _kernel.TcpInfo | None) -> None:
    """The kernel let go of a held connection's socket: its figures are final, its end told."""
    if sock is not None and getattr(sock, "_netstats_counts", None) is conn:
        sock._netstats_counts = StreamCounts(conn)  # (a count later than the end goes nowhere)
    found_closed(conn, final)
    conn._probe = None


# ---- TLS --------------------------------------------------------------------------------


def _host_name(tls_obj: Any) -> str | None:
    """The name TLS was asked to verify, if a name: an address literal names no host (as a
    connection made to an address gets host None), nor replaces the name a proxy was asked by."""
    name = getattr(tls_obj, "server_hostname", None)
    if not name:
        return None
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name  # type: ignore[no-any-return]
    return None


@guarded
def tls_starting(conn: Connection, sock: Any) -> None:
    """A TLS handshake begins on conn: its TCP connect is over (a TLS connect() handshakes before
    it returns), and tls_time counts from here."""
    if sock is not None and conn.connected is None and conn.error is None:
        _mark_connected(conn, sock)
    if conn._tls_phase is None:
        conn._tls_phase = (time.time(), None, None)


@guarded
def tls_established(conn: Connection, tls_obj: Any) -> None:
    conn.tls = tls_obj.version()
    phase = conn._tls_phase
    if phase is not None and phase[1] is None:
        reused = getattr(tls_obj, "session_reused", None)  # (None where the TLS object cannot tell)
        conn._tls_phase = (
            phase[0],
            max(0.0, time.time() - phase[0]),
            None if reused is None else bool(reused),
        )
    name = _host_name(tls_obj)
    if name:
        conn.host = name


@guarded
def tls_failed(conn: Connection, sock: Any, exc: BaseException) -> None:
    """The handshake failed: the attempt's error, and the time it spent handshaking."""
    if conn.error is None:
        conn.error = type(exc).__name__
    phase = conn._tls_phase
    if phase is not None and phase[1] is None:
        conn._tls_phase = (phase[0], max(0.0, time.time() - phase[0]), None)
    if sock is not None:
        finish(conn, sock)


def link_tls(conn: Connection, sock: Any, tls_obj: Any) -> StreamCounts:
    """asyncio-style TLS: tls_obj counts the plaintext; sock's ciphertext goes to a StreamCounts."""
    count_in_python(conn)
    tls_starting(conn, None)
    stream = StreamCounts(conn)
    sock._netstats_counts = stream
    tls_obj._netstats_counts = conn
    name = _host_name(tls_obj)
    if name:
        conn.host = name
    return stream


@guarded
def link_inner_tls(tls_sock: Any, counts: Any, nbytes: int) -> None:
    """TLS inside TLS: a write of tls_sock's plaintext that is a bare SSLObject's first flight
    (urllib3's SSLTransport through an HTTPS proxy) makes that object count the plaintext, and
    tls_sock's plaintext (the inner TLS's ciphertext) go to a StreamCounts, as on a TCP socket."""
    if type(counts) is not Connection or counts.closed is not None:
        return
    inner = _handshakes.claim(nbytes, lambda obj: obj._netstats_counts is not None)
    if inner is None:
        return
    counts._tx -= nbytes  # (the bytes just counted were the inner TLS's ciphertext)
    counts._writes -= 1
    stream = link_tls(counts, tls_sock, inner)
    stream._tx += nbytes
    stream._writes += 1


@guarded
def link_asyncio_protocol(protocol: Any, transport: Any) -> None:
    """asyncio's SSLProtocol on 3.11+ makes its SSLObject before connection_made()."""
    tls_obj = getattr(protocol, "_sslobj", None)
    if tls_obj is None or not hasattr(tls_obj, "_netstats_counts") or tls_obj._netstats_counts is not None:
        return
    raw = transport.get_extra_info("socket")
    sock = socket_of(_fd_of(raw)) if raw is not None else None
    c = sock._netstats_counts if sock is not None else None
    if c is None or c.conn.closed is not None:
        return
    link_tls(c.conn, sock, tls_obj)


# ---- bytes moved where the wrappers could not count them ------------------------------------


@guarded
def sendall_failed(c: Any, sock: Any) -> None:
    """A failed sendall() may have sent part of its data. On plain TCP the application's bytes
    are the stream's bytes, so the kernel's count of what it was handed is the exact figure."""
    if type(c) is not Connection or c.transport != "tcp" or c.tls is not None or c.closed is not None:
        return
    info = _kernel.read(sock, c.side == "client", c._ident)
    moved = info.wire_tx - c._kernel_base[1] - c._tx if info is not None else 0
    if moved > 0:
        c.add_write(moved)


def socket_of(fd: Any) -> Any:
    """The live captured socket with this descriptor, or None."""
    ref = _by_fd.get(fd) if isinstance(fd, int) else None
    sock = ref() if ref is not None else None
    return sock if sock is not None and _fd_of(sock) == fd else None


def claims_descriptor(fd: int) -> bool:
    """Whether netstats counts what moves on this descriptor itself (a live Python-seen connection)."""
    conn = _claims.get(fd)
    return conn is not None and conn.closed is None


def any_by_descriptor() -> bool:
    return bool(_by_fd)


def counts_of_descriptor(fd: int) -> Any:
    """What the captured socket with this descriptor counts into (os.sendfile), or None."""
    sock = socket_of(fd)
    return sock._netstats_counts if sock is not None else None


# ---- connections whose I/O C code makes, seen from their protocol (uvloop) -------------------


@guarded
def opened_elsewhere(
    side: str,
    local: Any,
    remote: Any,
    fd: int,
    probe: Callable[[], _kernel.TcpInfo | None],
    tls_obj: Any,
    origin: tuple[str | None, str | None],
) -> Connection | None:
    """A TCP connection on descriptor fd whose reads and writes C code makes (uvloop), connected
    now. Plain, the stream's bytes are the application's: probe reads the kernel's and sets
    rx/tx (kernel-counted, with no per-call events). TLS: tls_obj counts the plaintext."""
    _state.same_process()
    watchers = _state.serving if side == "server" else _state.active
    if not watchers:
        return None
    conn = _new(side, "tcp", watchers)
    conn.origin, conn.caller = origin
    conn.local, conn.remote = local, remote
    if side == "client":  # (on the thread that made it: uvloop's loop)
        conn.host = _names.name_and_time(remote)[0]
    conn._probe = probe
    conn._kernel_counted = tls_obj is None
    _claims[fd] = conn
    if tls_obj is not None:
        conn._on_io = io_listener(watchers)
        tls_obj._netstats_counts = conn
        tls_established(conn, tls_obj)
    notify(conn, "open")
    conn.connected = time.time()
    notify(conn, "connect")
    return conn


def claim_of(fd: int) -> Connection | None:
    """The live connection counting what moves on descriptor fd, or None."""
    conn = _claims.get(fd)
    return conn if conn is not None and conn.closed is None else None


def link_elsewhere(conn: Connection, tls_obj: Any) -> None:
    """TLS started on an opened_elsewhere() connection: tls_obj counts the plaintext from now on."""
    count_in_python(conn)
    conn._on_io = io_listener(conn._watchers)
    tls_obj._netstats_counts = conn
    tls_established(conn, tls_obj)


def adopted_elsewhere(conn: Connection, tls_obj: Any) -> Connection | None:
    """A captured socket handed to C code that does its I/O (uvloop's transports): no wrapper
    sees its bytes from now on. Plain, the kernel counts them (no per-call events); with
    tls_obj, that TLS object counts the plaintext."""
    sock = conn._sock() if conn._sock is not None else None
    counts: object = getattr(sock, "_netstats_counts", None)
    if sock is None or counts is not conn or conn.transport != "tcp":
        return None
    if conn.connected is None:
        _mark_connected(conn, sock)
    if tls_obj is None:
        conn._on_io = None
        count_in_kernel(conn, sock)
        return conn if conn._kernel_counted else None
    link_tls(conn, sock, tls_obj)
    conn._on_io = io_listener(conn._watchers)
    tls_established(conn, tls_obj)
    return conn


def followed(conn: Connection) -> None:
    """An opened_elsewhere() connection is followed by the census from now on (census.follow):
    it ends through found_closed(), with the kernel's final figures."""
    _handed[conn.id] = conn


@guarded
def closed_elsewhere(conn: Connection, fd: int) -> None:
    """A connection of opened_elsewhere() or adopted_elsewhere() is lost, its descriptor still
    open: the last reading is final. (One the census followed and no longer does ends here.)"""
    _handed.pop(conn.id, None)
    if conn.closed is not None:
        return
    sock = conn._sock() if conn._sock is not None else None
    if sock is not None:
        finish(conn, sock)
        return
    conn._final_info = conn.tcp_info()
    if _claims.get(fd) is conn:
        del _claims[fd]
    finish(conn, None)


# ---- connections the kernel census found ----------------------------------------------------


@guarded
def found(
    side: str,
    local: Any,
    remote: Any,
    probe: Callable[[], _kernel.TcpInfo | None],
    seen: float,
) -> Connection | None:
    """A TCP connection of this process that no Python socket call made (C code, a stock
    socket): a record whose figures come from the kernel only (source "kernel")."""
    watchers = _state.serving if side == "server" else _state.active
    if not watchers:
        return None
    conn = Connection(next(_ids), side, "tcp")
    conn.source = "kernel"
    conn.opened = conn.connected = seen
    conn.local, conn.remote = local, remote
    conn.host = _names.name_for(remote) if side == "client" else None
    conn._probe = probe
    return _found_opened(conn, watchers)


def _found_opened(conn: Connection, watchers: tuple[_state.Watcher, ...]) -> Connection:
    conn._watchers = watchers
    for watcher in watchers:
        watcher._opened(conn)
    notify(conn, "open")
    notify(conn, "connect")
    return conn


@guarded
def told_by_driver(
    local: Any,
    remote: Any,
    probe: Callable[[], _kernel.TcpInfo | None],
    opened: float,
    origin: tuple[str | None, str | None],
    host: str | None,
    tls: str | None,
    plain: bool,
) -> Connection | None:
    """A TCP connection C code made (libpq, libcurl...), told of by the Python call that made it
    (_sources/drivers.py) and followed by the census from then on. Plain TCP, the stream's bytes
    are the application's: rx/tx are the kernel's (kernel-counted, no per-call events, like
    uvloop's). Otherwise only the kernel's figures are known (source "kernel"), with the TLS
    version where the driver says. It ends through found_closed()."""
    watchers = _state.active
    if not watchers:
        return None
    conn = Connection(next(_ids), "client", "tcp")
    conn.source = "python" if plain else "kernel"
    conn.opened = conn.connected = opened
    conn.origin, conn.caller = origin
    conn.local, conn.remote = local, remote
    conn.host = host or _names.name_for(remote)
    conn.tls = tls
    conn._probe = probe
    conn._kernel_counted = plain
    _handed[conn.id] = conn  # its descriptor is C code's: found_closed() ends it, with rx/tx final
    return _found_opened(conn, watchers)


def handed_on(conn: Connection, sock: Any) -> bool:
    """sock gives its descriptor up (detach()) to code that does its I/O on the bare number
    (multiprocessing.connection): a plain TCP connection goes on, counted by the kernel from
    here. False where it cannot be (TLS, not TCP, not connected, no kernel figures)."""
    if (
        conn.transport != "tcp"
        or conn.tls is not None
        or conn.closed is not None
        or conn.connected is None
        or conn._others
        or getattr(sock, "_netstats_counts", None) is not conn
        or not _kernel.usable(sock)
    ):
        return False
    count_in_python(conn)  # rx/tx up to date
    info = conn.read_through(sock)  # (the bytes not yet read too: the base of kernel-counted rx)
    if info is None:
        return False
    conn._kernel_base = (info.consumed - conn._rx, info.wire_tx - conn._tx)
    conn._kernel_counted = True
    conn._on_io = io_listener(conn._watchers)
    _handed[conn.id] = conn
    sock._netstats_counts = None
    conn._sock = None
    fd = _fd_of(sock)
    if fd in _by_fd and _by_fd[fd]() is sock:
        del _by_fd[fd]
    _claims.pop(fd, None)
    return True


def probe_from(conn: Connection, probe: Callable[[], _kernel.TcpInfo | None]) -> None:
    """A handed-on connection's kernel figures come from the census's readings from now on."""
    conn._probe = probe


@guarded
def found_closed(conn: Connection, final: _kernel.TcpInfo | None) -> None:
    """A found connection's last descriptor closed (or the kernel destroyed it): its figures are final."""
    if conn.source == "python" and _handed.get(conn.id) is not conn:
        # Handed on, then taken back by a socket object made for its descriptor (which ends it):
        # the census may still follow its kernel socket, and must not end it a second time.
        return
    if final is not None and conn.closed is None:
        conn._final_info = final
        if _handed.pop(conn.id, None) is conn and conn._kernel_counted:  # rx/tx are the kernel's
            conn._rx = final.consumed - conn._kernel_base[0]
            conn._tx = final.wire_tx - conn._kernel_base[1]
    _handed.pop(conn.id, None)
    finish(conn, None)
