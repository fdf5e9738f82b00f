"""Connection lifecycle: open, connect, close, TLS hand-over and event dispatch.

Called by the wrappers in _hooks.py at the rare moments of a connection's life (never per
read or write). Every entry point here is guarded: an error of netstats is logged to the
"netstats" logger and swallowed, so it can never reach the code being observed.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import socket as _socketmod
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _kernel, _origin
from ._record import Connection, _Tally

if TYPE_CHECKING:
    from ._capture import Capture

log = logging.getLogger("netstats")

# Captures now active (all of them, and those that also want accepted connections).
# Replaced, never mutated, so the wrappers can read them without a lock.
active: tuple[Capture, ...] = ()
serving: tuple[Capture, ...] = ()
gated: tuple[Capture, ...] = ()  # captures that may refuse a connect (the pytest plugin's block)

_ids = itertools.count(1)
_by_fd: dict[int, weakref.ref[Any]] = {}  # fd -> live captured socket, for os.sendfile
# Which name a connect's address came from. Exact: the last lookup on the connecting thread
# (a lookup of an address literal says "no name"). Else, for lookups done on another thread
# (asyncio resolves in an executor): a name resolved to that address in the last minute.
_lookups = threading.local()
_names: dict[str, tuple[str, float]] = {}  # address -> (name, when)
_NAMES_MAX = 4096
_NAME_SECONDS = 60.0
_FAMILIES = {_socketmod.AF_INET, _socketmod.AF_INET6, getattr(_socketmod, "AF_UNIX", -1)}
_PENDING = {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR}
_CONNECTED = {0, errno.EISCONN}
kernel_classes: tuple[type, type] = (object, object)  # (CountingSocket, KernelCountedSocket), set by _hooks

F = TypeVar("F", bound=Callable[..., Any])
Emitter = Callable[[str, Connection, Any], None]


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


# ---- event dispatch ---------------------------------------------------------------------


def emit(conn: Connection, event: str, nbytes: int | None = None) -> None:
    for cap in conn._watchers:
        cap._emit(event, conn, nbytes)


def io_emitter(watchers: tuple[Capture, ...]) -> Emitter | None:
    """The function the wrappers call per read/write, or None when nobody listens."""
    targets = [c for c in watchers if c._live and c._wants_io]
    if not targets:
        return None
    if len(targets) == 1:
        return targets[0]._emit_io

    def emit_all(event: str, conn: Connection, nbytes: int) -> None:
        for cap in targets:
            cap._emit_io(event, conn, nbytes)

    return emit_all


def refresh(conn: Connection) -> None:
    if conn._emit is not _first_write:
        conn._emit = io_emitter(conn._watchers)


# ---- opening ----------------------------------------------------------------------------


def _transport(sock: Any) -> str | None:
    family = sock.family
    if family not in _FAMILIES:
        return None
    if family == getattr(_socketmod, "AF_UNIX", -1):
        return "unix"
    return "udp" if sock.type == _socketmod.SOCK_DGRAM else "tcp"


def _name_for(address: Any) -> str | None:
    if not isinstance(address, tuple) or not address:
        return None
    last = getattr(_lookups, "last", None)
    if last is not None and address[0] in last[1]:
        return last[0]  # type: ignore[no-any-return]
    entry = _names.get(address[0])
    if entry is not None and time.monotonic() - entry[1] < _NAME_SECONDS:
        return entry[0]
    return None


def _fd_of(sock: Any) -> int:
    try:
        return int(sock.fileno())
    except Exception:
        return -1


def attach(conn: Connection, sock: Any) -> None:
    """Make sock the one that counts for conn."""
    sock._ns = conn
    conn._sock = weakref.ref(sock)
    fd = _fd_of(sock)
    if fd >= 0:
        _by_fd[fd] = conn._sock


def detach_from(sock: Any) -> Connection | None:
    """Take sock's live Connection off it (for a hand-over to another object)."""
    c = getattr(sock, "_ns", None)
    if c is None or c.conn.closed is not None:
        return None
    _stop_kernel_counting(c.conn)
    sock._ns = None
    fd = _fd_of(sock)
    if _by_fd.get(fd) is c.conn._sock:
        del _by_fd[fd]
    return c.conn  # type: ignore[no-any-return]


def open_connection(
    sock: Any, side: str, watchers: tuple[Capture, ...], remote: Any = None
) -> Connection | None:
    transport = _transport(sock)
    if transport is None or not watchers:
        return None
    conn = Connection(next(_ids), side, transport)
    conn.origin, conn.caller = _origin.where()
    conn.remote = remote
    conn.host = _name_for(remote)
    conn._watchers = watchers
    try:
        conn.local = sock.getsockname()
    except OSError:
        pass
    attach(conn, sock)
    for cap in watchers:
        cap._opened(conn)
    # A new TCP client's first write may turn out to be a TLS ClientHello made by an SSLObject
    # (anyio, httpx async): _first_write looks for that before settling the emitter.
    conn._emit = _first_write if (transport == "tcp" and side == "client") else io_emitter(watchers)
    emit(conn, "open")
    return conn


@guarded
def connecting(sock: Any, address: Any) -> Connection | None:
    c = sock._ns
    if c is not None and c.conn.closed is None:
        return c.conn  # type: ignore[no-any-return]
    return open_connection(sock, "client", active, address)


def begin_connect(sock: Any, address: Any) -> Connection | None:
    """The record a connect() on sock counts into (opened if need be), once the gates let it go.

    A gate's refusal is not guarded, on purpose: it is the user's own configured error, meant
    for the caller. The attempt is recorded like a failed connect; nothing has left the socket.
    """
    conn = connecting(sock, address)
    if conn is not None and gated:
        for cap in gated:
            if cap._gate is not None and cap in conn._watchers:
                try:
                    cap._gate(conn)
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
        conn.host = _name_for(conn.remote)
    emit(conn, "connect")


def _fail(conn: Connection, sock: Any, error_name: str) -> None:
    conn.error = error_name
    finish(conn, sock)
    if sock is not None and sock._ns is conn:
        sock._ns = None  # a later connect on this socket is a new attempt


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
    try:
        remote = sock.getpeername()
    except OSError:
        remote = None
    conn = open_connection(sock, "server", serving, remote)
    if conn is not None:
        _mark_connected(conn, sock)
        _count_in_kernel(conn, sock)


def _count_in_kernel(conn: Connection, sock: Any) -> None:  # sock: Any, whatever its class
    """Drop the per-call wrappers when the kernel's counters can give rx/tx exactly."""
    wrapped, bare = kernel_classes
    if (
        conn._emit is None
        and conn.transport == "tcp"
        and type(sock) is wrapped
        and getattr(sock, "_ns", None) is conn
        and _kernel.read(sock) is not None
    ):
        conn._kernel = True
        conn._info()  # take the figures so far from the kernel
        sock.__class__ = bare


def _stop_kernel_counting(conn: Connection) -> None:
    """From now on rx/tx come from Python: TLS starts on this stream (the TLS object counts
    the plaintext), or another process is about to share the kernel socket."""
    if conn._kernel:
        conn._info()
        conn._kernel = False
        sock = conn._sock() if conn._sock is not None else None
        wrapped, bare = kernel_classes
        if sock is not None and type(sock) is bare:
            sock.__class__ = wrapped


@guarded
def before_sharing(sock: Any = None) -> None:
    """Before fork (every socket) or before a socket is pickled for another process: the
    kernel's counters will include the other process's bytes, so the wrappers count again."""
    socks = [sock] if sock is not None else [ref() for ref in list(_by_fd.values())]
    for s in socks:
        c = getattr(s, "_ns", None) if s is not None else None
        if c is not None and c.conn.closed is None:
            _stop_kernel_counting(c.conn)


@guarded
def datagram(sock: Any) -> Any:
    """An unconnected UDP socket's first datagram makes it a Connection."""
    if not active or sock.type != _socketmod.SOCK_DGRAM:
        return None
    return open_connection(sock, "client", active)


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
            conn._tcp = conn._info()  # last kernel read, descriptor still open
    conn.closed = time.time()
    ref = conn._sock
    conn._sock = None
    if ref is not None:
        fd = _fd_of(sock) if sock is not None else -1
        if _by_fd.get(fd) is ref:
            del _by_fd[fd]
    for cap in conn._watchers:
        cap._closed(conn)
    emit(conn, "close")


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


@guarded
def link_tls(conn: Connection, sock: Any, tls_obj: Any) -> None:
    """asyncio-style TLS: tls_obj counts the plaintext; sock's ciphertext goes to a _Tally."""
    _stop_kernel_counting(conn)
    tally = _Tally(conn)
    sock._ns = tally
    tls_obj._ns = conn
    name = getattr(tls_obj, "server_hostname", None)
    if name:
        conn.host = name


# SSLObjects whose first handshake output is waiting to be sent: (weakref, thread, size, time).
_waiting_tls: deque[tuple[weakref.ref[Any], int, int, float]] = deque(maxlen=256)
_WAIT_SECONDS = 30.0


@guarded
def tls_output_pending(tls_obj: Any, size: int) -> None:
    _waiting_tls.append((weakref.ref(tls_obj), threading.get_ident(), size, time.monotonic()))


@guarded
def _first_write(event: str, conn: Connection, nbytes: int) -> None:
    """One-shot check on a TCP client's first write: is it an SSLObject's ClientHello?

    Libraries that drive ssl.SSLObject themselves (anyio, hence httpx async) give no
    link between the TLS object and the socket. Their first handshake flight is written
    at once, whole, on the same thread: match it by thread and exact size, oldest first.
    """
    if event != "write":
        emitter = io_emitter(conn._watchers)
        if emitter is not None:
            emitter(event, conn, nbytes)
        return
    conn._emit = io_emitter(conn._watchers)
    if _waiting_tls and _claim_client_hello(conn, nbytes):
        return
    if conn._emit is not None:
        conn._emit(event, conn, nbytes)
    else:
        sock = conn._sock() if conn._sock is not None else None
        if sock is not None:
            _count_in_kernel(conn, sock)


@guarded
def _claim_client_hello(conn: Connection, nbytes: int) -> bool:
    me = threading.get_ident()
    now = time.monotonic()
    for entry in list(_waiting_tls):
        ref, thread, size, when = entry
        tls_obj = ref()
        if tls_obj is None or now - when > _WAIT_SECONDS or tls_obj._ns is not None:
            _waiting_tls.remove(entry)
            continue
        if thread == me and size == nbytes:
            _waiting_tls.remove(entry)
            sock = conn._sock() if conn._sock is not None else None
            if sock is None or sock._ns is not conn:
                return False
            # The bytes just counted were ciphertext: move them to the stream's tally.
            conn._tx -= nbytes
            conn._writes -= 1
            link_tls(conn, sock, tls_obj)
            sock._ns._tx += nbytes
            sock._ns._writes += 1
            return True
    return False


@guarded
def link_asyncio_protocol(protocol: Any, transport: Any) -> None:
    """asyncio's SSLProtocol on 3.11+ makes its SSLObject before connection_made()."""
    tls_obj = getattr(protocol, "_sslobj", None)
    if tls_obj is None or not hasattr(tls_obj, "_ns") or tls_obj._ns is not None:
        return
    raw = transport.get_extra_info("socket")
    sock = socket_of(_fd_of(raw)) if raw is not None else None
    if sock is None or sock._ns is None or sock._ns.conn.closed is not None:
        return
    link_tls(sock._ns.conn, sock, tls_obj)


@guarded
def sendall_failed(c: Any, sock: Any) -> None:
    """A failed sendall() may have sent part of its data. On plain TCP the application's bytes
    are the stream's bytes, so the kernel's count of what it was handed is the exact figure."""
    if type(c) is not Connection or c.transport != "tcp" or c.tls is not None or c.closed is not None:
        return
    info = _kernel.read(sock)
    moved = info.wire_tx - c._tx if info is not None else 0
    if moved > 0:
        c._tx += moved
        c._writes += 1
        if c._emit is not None:
            c._emit("write", c, moved)


def socket_of(fd: Any) -> Any:
    """The live captured socket with this descriptor, or None."""
    ref = _by_fd.get(fd) if isinstance(fd, int) else None
    sock = ref() if ref is not None else None
    return sock if sock is not None and _fd_of(sock) == fd else None


# ---- os.sendfile ------------------------------------------------------------------------


@guarded
def sent_file(out_fd: int, nbytes: int) -> None:
    sock = socket_of(out_fd)
    if sock is None or nbytes <= 0:
        return
    c = sock._ns
    if c is None:
        return
    c._tx += nbytes
    c._writes += 1
    if c._emit is not None:
        c._emit("write", c, nbytes)


# ---- names ------------------------------------------------------------------------------


@guarded
def resolved(host: Any, results: Any) -> None:
    if isinstance(host, bytes):
        host = host.decode("idna")
    name = host if isinstance(host, str) and host and not _is_address(host) else None
    addresses = frozenset(sockaddr[0] for *_, sockaddr in results)
    _lookups.last = (name, addresses)
    if name is None:
        return
    now = time.monotonic()
    for address in addresses:
        _names.pop(address, None)  # re-inserted last: the oldest go first when full
        if len(_names) >= _NAMES_MAX:
            _names.pop(next(iter(_names)))
        _names[address] = (name, now)


@guarded
def resolve_failed(host: Any, port: Any, kind: int, exc: BaseException) -> None:
    """A name that did not resolve is a connection attempt that failed before it had a socket."""
    watchers = active
    if not watchers:
        return
    transport = "udp" if kind == _socketmod.SOCK_DGRAM else "tcp"
    conn = Connection(next(_ids), "client", transport)
    conn.origin, conn.caller = _origin.where()
    conn.host = host.decode("idna", "replace") if isinstance(host, bytes) else host
    conn._watchers = watchers
    for cap in watchers:
        cap._opened(conn)
    emit(conn, "open")
    conn.error = type(exc).__name__
    finish(conn, None)


def _is_address(host: str) -> bool:
    for family in (_socketmod.AF_INET, _socketmod.AF_INET6):
        try:
            _socketmod.inet_pton(family, host.split("%", 1)[0])
            return True
        except (OSError, ValueError):
            pass
    return False
