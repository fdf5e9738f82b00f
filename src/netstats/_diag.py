"""Linux's sock_diag netlink interface: one TCP socket's figures by its identity, and the
final figures of every TCP socket as it is destroyed. No privileges needed.

A socket is named by its 4-tuple and its cookie (a 64-bit number the kernel gives each socket
for its life: `SO_COOKIE`): a query names both, so it can never read another socket's figures,
and it still answers after the descriptor closed while the socket lingers (FIN_WAIT, unsent
data). The destroy feed (groups SKNLGRP_INET_TCP_DESTROY and SKNLGRP_INET6_TCP_DESTROY) brings
each TCP socket of the network namespace as it dies, with its final `tcp_info`: callers match
by cookie and ignore the rest. Anywhere else every function returns None.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
import threading
from collections.abc import Container
from typing import Any, NamedTuple

from ._owned import Socket

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH: every socket of the family
INET_DIAG_INFO = 2
SO_COOKIE = getattr(socket, "SO_COOKIE", 57)
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NETLINK_DROP_MEMBERSHIP = 270, 1, 2
DESTROY_GROUPS = (1, 3)  # SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY
_TCP_STATES_ALL = 0xFFF
TIME_WAIT, CLOSE = 6, 7
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBxI")  # inet_diag_req_v2 head: family, protocol, ext, states
_SOCKID = struct.Struct(">HH16s16s")  # inet_diag_sockid head: sport, dport, src, dst (network order)
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie low, cookie high (host order)
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_ATTR = struct.Struct("=HH")
supported = sys.platform.startswith("linux") and hasattr(socket, "AF_NETLINK")


class Diag(NamedTuple):
    """One socket as sock_diag reports it."""

    family: int
    state: int
    local: tuple[str, int]
    remote: tuple[str, int]
    cookie: int
    unread: int  # idiag_rqueue: received and not yet read, for a live connection
    inode: int
    info: bytes | None  # its `struct tcp_info` (see _kernel.unpack), when it came with one


def cookie_of(sock: Any) -> int | None:
    """The kernel's cookie for a socket object (its identity for life), or None."""
    try:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), sys.byteorder)
    except (OSError, ValueError):
        return None


def _address(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def _packed(family: int, address: str) -> bytes:
    return socket.inet_pton(family, address.split("%", 1)[0]).ljust(16, b"\0")


def parse(data: bytes, wanted: Container[int] | None = None) -> list[Diag]:
    """Every inet_diag_msg in a netlink datagram (errors and other messages are skipped); only
    those whose cookie is `wanted`, if given (the others cost one unpack each)."""
    out: list[Diag] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        body = offset + _HEADER.size
        end = offset + length
        if kind == SOCK_DIAG_BY_FAMILY and end - body >= 72:
            _if, low, high = _SOCKID_TAIL.unpack_from(data, body + 40)
            if wanted is not None and low | (high << 32) not in wanted:
                offset += (length + 3) & ~3
                continue
            family, state = data[body], data[body + 1]
            sport, dport, src, dst = _SOCKID.unpack_from(data, body + 4)
            _exp, rqueue, _wq, _uid, inode = _MSG_TAIL.unpack_from(data, body + 52)
            info = None
            attr = body + 72
            while attr + _ATTR.size <= end:
                size, kind_attr = _ATTR.unpack_from(data, attr)
                if size < _ATTR.size:
                    break
                if kind_attr == INET_DIAG_INFO:
                    info = data[attr + _ATTR.size : attr + size]
                attr += (size + 3) & ~3
            if family in (socket.AF_INET, socket.AF_INET6):
                out.append(
                    Diag(
                        family,
                        state,
                        (_address(family, src), sport),
                        (_address(family, dst), dport),
                        low | (high << 32),
                        rqueue,
                        inode,
                        info,
                    )
                )
        offset += (length + 3) & ~3
    return out


_NO_COOKIE = 0xFFFFFFFFFFFFFFFF


def _request(
    family: int, local: Any, remote: Any, cookie: int, states: int = _TCP_STATES_ALL, info: bool = True
) -> bytes:
    """One socket by its 4-tuple and cookie (_NO_COOKIE: any), with its tcp_info (`info`)."""
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, (1 << (INET_DIAG_INFO - 1)) if info else 0, states)
    body += _SOCKID.pack(local[1], remote[1], _packed(family, local[0]), _packed(family, remote[0]))
    scope = local[3] if family == socket.AF_INET6 and len(local) > 3 else 0
    body += _SOCKID_TAIL.pack(scope, cookie & 0xFFFFFFFF, cookie >> 32)
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body


def _netlink(what: str) -> Socket:
    """A sock_diag netlink socket of netstats' own, checked before each use (see _owned.py)."""
    return Socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG, what)


_query_lock = threading.Lock()
_query_socket: Socket | None = None  # one for the process, made when first needed


def _ask(request: bytes) -> bytes | None:
    """One request and its reply on the query socket; a new socket if the program closed the
    number of the last one (its number is never used again)."""
    global _query_socket
    if not supported:
        return None
    with _query_lock:
        try:
            if _query_socket is None or not _query_socket.ours():
                _query_socket = _netlink("sock_diag query")
                _query_socket.settimeout(1.0)
            _query_socket.send(request)
            if not _query_socket.ours():  # (closed since: the reply is lost, the next ask makes a new one)
                return None
            reply: bytes = _query_socket.recv(65536)
            return reply
        except OSError:
            return None


def query(family: int, local: Any, remote: Any, cookie: int) -> Diag | None:
    """The socket with this 4-tuple and cookie, as the kernel sees it now; None if it is gone."""
    try:
        data = _ask(_request(family, local, remote, cookie))
    except (ValueError, OSError, struct.error, IndexError, TypeError):
        return None
    for found in parse(data or b""):
        if found.cookie == cookie:
            return found
    return None


def holder(family: int, local: Any, remote: Any, cookie: int) -> int | None:
    """The inode of the socket's file, which lives while a descriptor or a call in flight holds it:
    0 once the socket is orphaned (closed, lingering), None if it is gone or cannot be asked.
    (The cheap question: no tcp_info asked for.)"""
    try:
        data = _ask(_request(family, local, remote, cookie, info=False)) or b""
        for diag in parse(data, (cookie,)):
            return diag.inode
    except (ValueError, OSError, struct.error, IndexError, TypeError):
        pass
    return None


def time_wait(family: int, local: Any, remote: Any) -> bool | None:
    """Whether the kernel holds a TIME_WAIT entry for this 4-tuple; None if it cannot tell."""
    try:
        data = _ask(_request(family, local, remote, _NO_COOKIE, 1 << TIME_WAIT))
    except (ValueError, OSError, struct.error, IndexError, TypeError):
        return None
    if data is None:
        return None
    return any(found.state == TIME_WAIT for found in parse(data))


def dump(family: int) -> list[Diag] | None:
    """Every TCP socket of this family in the network namespace but time-wait entries, with its
    tcp_info (the caller keeps those it wants, by inode); None where sock_diag cannot be asked."""
    if not supported:
        return None
    states = _TCP_STATES_ALL & ~(1 << TIME_WAIT)  # time-wait entries belong to no descriptor
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), states)
    body += bytes(_SOCKID.size + _SOCKID_TAIL.size)
    flags = NLM_F_REQUEST | NLM_F_DUMP
    request = _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + body
    out: list[Diag] = []
    try:
        sock = _netlink("sock_diag dump")
    except OSError:
        return None
    try:
        sock.settimeout(2.0)
        if sock.ours():
            sock.send(request)
        while sock.ours():  # (False: the program closed its number; nothing more is read)
            data = sock.recv(262144)
            out.extend(parse(data))
            if not data or _last_part(data):
                return out
        return None
    except OSError:
        return None
    finally:
        sock.close()


def _last_part(data: bytes) -> bool:
    """Whether a dump's datagram holds its end (NLMSG_DONE) or an error."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return True
        if length < _HEADER.size:
            return True
        offset += (length + 3) & ~3
    return False


def close_query_socket() -> None:
    """Let the query socket go (made again when next needed)."""
    global _query_socket
    with _query_lock:
        if _query_socket is not None:
            _query_socket.close()  # (only if its number is still its own)
            _query_socket = None


def forget_after_fork() -> None:
    """In a forked child: the query socket is the parent's too (a reply could reach either
    process); this process's copy of it goes, and the next query makes one of its own."""
    global _query_lock, _query_socket
    _query_lock = threading.Lock()  # (another thread may have held it at the fork)
    if _query_socket is not None:
        _query_socket.close()  # (this process's descriptor only)
        _query_socket = None


def fin_at_destroy(dead: Diag, fin_seen: bool) -> int | None:
    """Whether a destroyed socket's final bytes_received counts the peer's FIN: 1 or 0, or None
    to let _kernel.decode judge by our own FIN's ack (`fin_seen`: a live reading showed the
    peer's FIN had arrived).

    A socket that sent its FIN first, gracefully (all received data read, or the kernel resets
    instead), lives on as a time-wait entry with the same cookie: then rcv_nxt - copied_seq
    (`unread`) is 1 if the peer's FIN came after the close, when no read could consume it, else 0.
    A socket closed by the peer first, or reset, leaves no such entry.
    """
    if dead.state != CLOSE:
        return None
    if fin_seen:
        return 1
    if query(dead.family, dead.local, dead.remote, dead.cookie) is not None:
        return 1 if dead.unread > 0 else 0
    # No time-wait entry: the peer closed first (its FIN received), or a reset ended it, maybe
    # after our own close when the peer's data came too late (a TLS close_notify). The kernel
    # keeps nothing that tells which: _kernel.decode's rule decides (the README says so).
    return None


def destroy_feed() -> Socket | None:
    """A netlink socket that can receive every TCP socket's destruction in this network
    namespace, once listen() has joined it to the destroy groups."""
    if not supported:
        return None
    try:
        feed = _netlink("destroy feed")
    except OSError:
        return None
    try:
        feed.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        feed.bind((0, 0))
    except OSError:
        feed.close()
        return None
    return feed


def listen(feed: Socket, on: bool) -> bool:
    """Join (on) or leave the destroy groups; whether that worked. While anyone listens, the
    kernel builds a notification for every TCP socket that dies in the namespace and wakes the
    listener for each (about 45 us of this process's CPU per short connection, measured): listen
    only while some socket's end is awaited."""
    try:
        for group in DESTROY_GROUPS:
            if not feed.ours():
                return False
            feed.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP if on else NETLINK_DROP_MEMBERSHIP, group)
    except OSError:
        return False
    return True


_feed_buffer = bytearray(262144)  # one for the process: drain() runs on the census thread


def drain(feed: Socket, wanted: Container[int]) -> tuple[list[Diag], bool]:
    """The destroyed sockets with these cookies among what the feed holds now, without waiting;
    True if the kernel dropped some notifications (ENOBUFS). The feed has every TCP socket of
    the network namespace: the others are skipped at the cost of one unpack each. Ends as soon
    as the feed's number is no longer its own (the caller then goes on without it)."""
    out: list[Diag] = []
    dropped = False
    while feed.ours():
        try:
            size = feed.recv_into(_feed_buffer, 0, socket.MSG_DONTWAIT)
            data = bytes(_feed_buffer[:size])
        except BlockingIOError:
            return out, dropped
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                dropped = True
                continue
            return out, dropped
        out.extend(parse(data, wanted))
    return out, dropped
