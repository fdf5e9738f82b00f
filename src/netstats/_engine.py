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

import errno
import functools
import itertools
import logging
import socket as _socketmod
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from . import _handshakes, _kernel, _names, _origin, _state
from ._record import Connection, StreamCounts

log = logging.getLogger("netstats")

_ids = itertools.count(1)
_by_fd: dict[int, weakref.ref[Any]] = {}  # fd -> live captured socket (sendfile, asyncio, fork)
_FAMILIES = {_socketmod.AF_INET, _socketmod.AF_INET6, getattr(_socketmod, "AF_UNIX", -1)}
_PENDING = {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR}
_CONNECTED = {0, errno.EISCONN}

F = TypeVar("F", bound=Callable[..., Any])


def guarded(fn: F) -> F:
    """Never let netstats' own error reach the observed code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("netstats: internal error in %s (the observed code is unaffected)", fn.__name__)
            return None

    return wrapper  # type: ignore[return-value]


# ---- telling the watchers -----------------------------------------------------------------


def notify(conn: Connection, event: str) -> None:
    """A lifecycle event ("open", "connect", "close") for every capture watching conn."""
    for watcher in conn._watchers:
        watcher._notify(event, conn, None)


def io_listener(watchers: tuple[_state.Watcher, ...]) -> _state.IoListener | None:
    """The function the wrappers call per read/write, or None when nobody listens."""
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
    if conn._on_io is not _settle_at_first_write:
        conn._on_io = io_listener(conn._watchers)


# ---- opening ----------------------------------------------------------------------------


def _transport(sock: Any) -> str | None:
    family = sock.family
    if family not in _FAMILIES:
        return None
    if family == getattr(_socketmod, "AF_UNIX", -1):
        return "unix"
    return "udp" if sock.type == _socketmod.SOCK_DGRAM else "tcp"


def _fd_of(sock: Any) -> int:
    try:
        return int(sock.fileno())
    except Exception:
        return -1


def attach(conn: Connection, sock: Any) -> None:
    """Make sock the object that counts for conn."""
    sock._netstats_counts = conn
    conn._sock = weakref.ref(sock)
    fd = _fd_of(sock)
    if fd >= 0:
        _by_fd[fd] = conn._sock


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
    if transport is None or not watchers:
        return None
    conn = _new(side, transport, watchers)
    conn.remote = remote
    conn.host = _names.name_for(remote)
    try:
        conn.local = sock.getsockname()
    except OSError:
        pass
    attach(conn, sock)
    # A TCP client settles how it is counted at its first write, which may turn out to be a
    # bare SSLObject's ClientHello (see _handshakes.py).
    tcp_client = transport == "tcp" and side == "client"
    conn._on_io = _settle_at_first_write if tcp_client else io_listener(watchers)
    notify(conn, "open")
    return conn


@guarded
def connecting(sock: Any, address: Any) -> Connection | None:
    c = sock._netstats_counts
    if c is not None and c.conn.closed is None:
        return c.conn  # type: ignore[no-any-return]
    return open_connection(sock, "client", _state.active, address)


def begin_connect(sock: Any, address: Any) -> Connection | None:
    """The record a connect() on sock counts into (opened if need be), once the gates let it go.

    A gate's refusal is not guarded, on purpose: it is the user's own configured error, meant
    for the caller. The attempt is recorded like a failed connect; nothing has left the socket.
    """
    conn = connecting(sock, address)
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
    try:
        conn.remote = sock.getpeername()
        conn.local = sock.getsockname()
    except OSError:
        pass
    if conn.host is None:
        conn.host = _names.name_for(conn.remote)
    notify(conn, "connect")


def _fail(conn: Connection, sock: Any, error_name: str) -> None:
    conn.error = error_name
    finish(conn, sock)
    if sock is not None and sock._netstats_counts is conn:
        sock._netstats_counts = None  # a later connect on this socket is a new attempt


@guarded
def connect_done(conn: Connection, sock: Any) -> None:
    _mark_connected(conn, sock)


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
        remote = sock.getpeername()
    except OSError:
        remote = None
    conn = open_connection(sock, "server", _state.serving, remote)
    if conn is not None:
        _mark_connected(conn, sock)
        count_in_kernel(conn, sock)


@guarded
def datagram(sock: Any) -> Any:
    """An unconnected UDP socket's first datagram makes it a Connection."""
    if not _state.active or sock.type != _socketmod.SOCK_DGRAM:
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
    finish(conn, None)


# ---- how a connection is counted ----------------------------------------------------------


def count_in_kernel(conn: Connection, sock: Any) -> None:
    """Drop the per-call wrappers when the kernel's counters can give rx/tx exactly."""
    bare = getattr(type(sock), "_kernel_twin", None)
    if (
        bare is not None
        and conn._on_io is None
        and conn.transport == "tcp"
        and getattr(sock, "_netstats_counts", None) is conn
        and _kernel.read(sock) is not None
    ):
        conn._kernel_counted = True
        conn.tcp_info()  # take the figures so far from the kernel
        sock.__class__ = bare


def count_in_python(conn: Connection) -> None:
    """From now on rx/tx come from the wrappers: TLS starts on this stream (the TLS object counts
    the plaintext), or another process is about to share the kernel socket."""
    if conn._kernel_counted:
        conn.tcp_info()
        conn._kernel_counted = False
        sock = conn._sock() if conn._sock is not None else None
        wrapped = getattr(type(sock), "_python_twin", None)
        if wrapped is not None:
            sock.__class__ = wrapped


@guarded
def before_sharing(sock: Any = None) -> None:
    """Before fork (every socket) or before a socket is pickled for another process: the
    kernel's counters will include the other process's bytes, so the wrappers count again."""
    socks = [sock] if sock is not None else [ref() for ref in list(_by_fd.values())]
    for s in socks:
        c = getattr(s, "_netstats_counts", None) if s is not None else None
        if c is not None and c.conn.closed is None:
            count_in_python(c.conn)


@guarded
def _settle_at_first_write(event: str, conn: Connection, nbytes: int) -> None:
    """A TCP client's one-shot listener: at its first write, settle how it is counted.

    That write may be the ClientHello of a bare SSLObject waiting for its socket (see
    _handshakes.py): then TLS is linked and the bytes move to the stream's counts. Otherwise
    the real listener takes over, or, with nobody listening, the kernel counts from now on.
    """
    conn._on_io = io_listener(conn._watchers)
    if event != "write":
        if conn._on_io is not None:
            conn._on_io(event, conn, nbytes)
        return
    if _handshakes.any_waiting() and _link_client_hello(conn, nbytes):
        return
    if conn._on_io is not None:
        conn._on_io(event, conn, nbytes)
    else:
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
def finish(conn: Connection, sock: Any) -> None:
    """The connection ends: freeze its figures, then tell the watchers (once)."""
    if conn.closed is not None:
        return
    if sock is not None and conn.transport == "tcp" and conn.error is None:
        if conn.connected is None:
            try:  # a non-blocking connect whose end nobody asked about
                sock.getpeername()
                _mark_connected(conn, sock)
            except OSError:
                pass
        if conn.connected is not None:
            conn._final_info = conn.tcp_info()  # last kernel read, descriptor still open
    conn.closed = time.time()
    ref = conn._sock
    conn._sock = None
    if ref is not None:
        fd = _fd_of(sock) if sock is not None else -1
        if _by_fd.get(fd) is ref:
            del _by_fd[fd]
    for watcher in conn._watchers:
        watcher._closed(conn)
    notify(conn, "close")


# ---- TLS --------------------------------------------------------------------------------


@guarded
def tls_established(conn: Connection, tls_obj: Any) -> None:
    conn.tls = tls_obj.version()
    name = getattr(tls_obj, "server_hostname", None)
    if name:
        conn.host = name


@guarded
def tls_failed(conn: Connection, sock: Any, exc: BaseException) -> None:
    if conn.error is None:
        conn.error = type(exc).__name__
    if sock is not None:
        finish(conn, sock)


def link_tls(conn: Connection, sock: Any, tls_obj: Any) -> StreamCounts:
    """asyncio-style TLS: tls_obj counts the plaintext; sock's ciphertext goes to a StreamCounts."""
    count_in_python(conn)
    stream = StreamCounts(conn)
    sock._netstats_counts = stream
    tls_obj._netstats_counts = conn
    name = getattr(tls_obj, "server_hostname", None)
    if name:
        conn.host = name
    return stream


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
    info = _kernel.read(sock)
    moved = info.wire_tx - c._tx if info is not None else 0
    if moved > 0:
        c.add_write(moved)


def socket_of(fd: Any) -> Any:
    """The live captured socket with this descriptor, or None."""
    ref = _by_fd.get(fd) if isinstance(fd, int) else None
    sock = ref() if ref is not None else None
    return sock if sock is not None and _fd_of(sock) == fd else None


def any_by_descriptor() -> bool:
    return bool(_by_fd)


def counts_of_descriptor(fd: int) -> Any:
    """What the captured socket with this descriptor counts into (os.sendfile), or None."""
    sock = socket_of(fd)
    return sock._netstats_counts if sock is not None else None
