"""Linux's own figures for a TCP socket: wire bytes, round-trip times, retransmissions.

Read with one getsockopt(TCP_INFO) and one ioctl(SIOCINQ) — at close, on a live stats() call,
never per read or write. Offsets are those of `struct tcp_info` in linux/tcp.h; the length the
kernel returns says which fields exist (bytes_sent/bytes_retrans need Linux 4.19). Anywhere
else (other platforms, UDP, Unix sockets, older kernels) `read()` returns None: the fields are
None, never a guess.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _diag

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

TCP_INFO = getattr(socket, "TCP_INFO", None)
SIOCINQ = 0x541B  # FIONREAD on Linux: bytes received and not yet read (a received FIN excluded)
_NEEDED = 216  # through tcpi_bytes_retrans
_getsockopt: Any = _socket.socket.getsockopt
_INFO = struct.Struct("=B67xI28xI16xQQ8xII48xQQ")  # state, rtt, total_retrans, bytes_acked, ...
_TIMES = struct.Struct("=52xI96xI")  # tcpi_last_data_recv (ms ago), tcpi_data_segs_in (Linux 4.6)
_TCP, _SIZE = socket.IPPROTO_TCP, 232
_INQ, _NO_BYTES = struct.Struct("i"), bytes(4)
_fstat = os.fstat
_time = time.time
_ioctl: Any = fcntl.ioctl if fcntl is not None else None
supported = sys.platform.startswith("linux") and TCP_INFO is not None and fcntl is not None

# A FIN from the peer has arrived in these states. CLOSE with the descriptor still open follows
# either both FINs (after shutdown) or a reset: read() tells them apart by our FIN's ack.
_CLOSE_WAIT, _LAST_ACK, _CLOSING, _TIME_WAIT, _CLOSE = 8, 9, 11, 6, 7
CLOSE_STATE = _CLOSE
_FIN_RECEIVED = frozenset({_CLOSE_WAIT, _LAST_ACK, _CLOSING, _TIME_WAIT})


class TcpInfo(NamedTuple):
    """Kernel figures for one TCP connection, in bytes and seconds."""

    wire_rx: int  # bytes of the TCP stream received, read by the application or not
    wire_tx: int  # bytes of the TCP stream the application handed to the kernel
    unread: int | None  # received, not yet read by the application (None: not asked)
    rtt: float  # smoothed round-trip time
    min_rtt: float  # lowest round-trip time seen
    retransmits: int  # segments retransmitted
    retrans_bytes: int  # bytes retransmitted
    peer_fin: bool = False  # the peer's FIN has arrived (counted in the kernel's bytes received)
    data_segs_in: int | None = None  # segments that carried data in
    last_data_in: float | None = None  # when the last of them came (wall clock, to the kernel's tick)

    @property
    def consumed(self) -> int:
        """Bytes received and read by the application: wire_rx less unread (a reading that
        asked for unread: kernel-counted rx, register(), a hand-over, the census)."""
        if self.unread is None:
            raise ValueError("a kernel reading without the bytes not yet read")
        return self.wire_rx - self.unread


# TcpInfo from a tuple of all its fields (its generated __new__ costs a Python call per reading)
_make_info: Callable[[type[TcpInfo], tuple[Any, ...]], TcpInfo] = tuple.__new__  # type: ignore[assignment]

# The figures of a TCP attempt that never connected: no stream bytes either way, the rest unknown.
NOTHING_MOVED: TcpInfo = _make_info(TcpInfo, (0, 0, 0, None, None, None, None, False, 0, None))

_SO_COOKIE = getattr(socket, "SO_COOKIE", 57)  # Linux 4.12: a socket's 64-bit id, never reused
_SOL_SOCKET = socket.SOL_SOCKET


def identity(sock: Any) -> Any:
    """The kernel's identity of the socket behind sock's descriptor (its cookie), or None.

    A descriptor number closed behind a socket object's back may be reused by another
    connection: a read checks this first, so a record never takes another socket's figures.
    """
    if not supported:
        return None
    try:
        return _getsockopt(sock, _SOL_SOCKET, _SO_COOKIE, 8)
    except OSError:  # older kernels: the inode is as good, at a higher price
        try:
            return _fstat(sock.fileno()).st_ino
        except (OSError, ValueError, TypeError):
            return None
    except (ValueError, TypeError):
        return None


_works = False  # a read has succeeded in this process: TCP_INFO has every field we need


def usable(sock: Any) -> bool:
    """Whether the kernel can count this TCP socket's bytes (read once per process, then known)."""
    global _works
    if not supported:  # (the one switch: the benchmark's wrapped variant turns it off)
        return False
    if not _works:
        _works = read(sock) is not None
    return _works


def read(
    sock: Any,
    client: bool = True,
    ident: Any = None,
    peer_fin: bool = False,
    addresses: tuple[Any, Any] | None = None,
    final: bool = False,
    unread: bool = True,
) -> TcpInfo | None:
    """The kernel's figures for a live TCP socket, or None where they cannot be had.

    `client`: the socket connected (its SYN counts once in bytes_acked) rather than accepted.
    `ident`: the socket's identity() when its record began; another socket's figures are None.
    For a socket in the CLOSE state (see _fin_in_close): `peer_fin`, an earlier reading saw the
    peer's FIN; `addresses`, (local, remote); `final`, the descriptor is about to close.
    `unread`: read the bytes not yet read (SIOCINQ), which only kernel-counted rx needs; without
    it the field is None and a reading costs one system call less.
    """
    if not supported:
        return None
    try:
        if (
            ident is not None
            and (
                _getsockopt(sock, _SOL_SOCKET, _SO_COOKIE, 8)
                if type(ident) is bytes
                else _fstat(sock.fileno()).st_ino
            )
            != ident
        ):  # (identity(), inlined: a reading at every close)
            return None
        # The kernel reads tcpi_state before it locks the socket (a reading may pair the state
        # before a FIN with the bytes after it), and SIOCINQ is another call: take the figures
        # only when two reads agree (nothing arrived between), SIOCINQ or not.
        raw = _getsockopt(sock, _TCP, TCP_INFO, _SIZE)
        if len(raw) < _NEEDED:
            return None
        before = _INFO.unpack_from(raw)
        inq = None
        for _ in range(5):
            if unread:
                inq = _INQ.unpack(_ioctl(sock.fileno(), SIOCINQ, _NO_BYTES))[0]
            second = _getsockopt(sock, _TCP, TCP_INFO, _SIZE)
            fields = _INFO.unpack_from(second)
            if fields[0] == before[0] and fields[4] == before[4]:  # the state, bytes received
                break
            before = fields
    except (OSError, ValueError, TypeError, struct.error):
        return None
    fin: int | None = None
    if fields[0] == _CLOSE:
        state, rtt, retransmits, acked, received, notsent, min_rtt, sent, retrans = fields
        our_fin_acked = acked - (1 if client else 0) > sent - retrans  # past the data (and SYN)
        fin = 1 if peer_fin or _fin_in_close(sock, our_fin_acked, addresses, final) else 0
    last_recv_ms, segs_in = _TIMES.unpack_from(second)
    return decode(fields, inq, client, fin, segs_in, _time() - last_recv_ms / 1000)


# The kernel counts tcpi_last_data_recv in ticks (1 to 10 ms): a first byte that seems to come
# before the write it answers, by less than this, came right after it.
_TICK = 0.011


def first_byte_after(info: TcpInfo, write_end: float) -> float | None:
    """Seconds from `write_end` (wall clock) to the first data in, where the kernel says it: only
    while a single data segment has come in (the last one is then the first); else None."""
    if info.data_segs_in != 1 or info.last_data_in is None:
        return None
    waited = info.last_data_in - write_end
    if waited < -_TICK:
        return None  # that segment came before the write (the peer spoke first)
    return max(0.0, waited)


def unpack(raw: bytes) -> tuple[int, ...] | None:
    """The fields decode() takes from a `struct tcp_info`, or None if it is too short (old kernel)."""
    return _INFO.unpack_from(raw) if len(raw) >= _NEEDED else None


def decode(
    fields: tuple[int, ...],
    inq: int | None,
    client: bool,
    fin: int | None = None,
    data_segs_in: int | None = None,
    last_data_in: float | None = None,
) -> TcpInfo:
    """TcpInfo from unpack()'s fields and the bytes received and not yet read. `fin`: whether
    bytes_received counts the peer's FIN, where the caller knows; else the state says, and in
    CLOSE our own FIN's acknowledgement (both FINs, as far as can be told without more).
    `data_segs_in`, `last_data_in`: the TcpInfo fields of those names, where read."""
    state, rtt, retransmits, acked, received, notsent, min_rtt, sent, retrans = fields
    if fin is None:
        if state == _CLOSE:
            fin = 1 if acked - (1 if client else 0) > sent - retrans else 0
        else:
            fin = 1 if state in _FIN_RECEIVED else 0
    wire_rx = received - fin
    # wire_rx, wire_tx, unread, rtt, min_rtt, retransmits, retrans_bytes, peer_fin, ...
    return _make_info(
        TcpInfo,
        (
            wire_rx if wire_rx > 0 else 0,
            sent - retrans + notsent,
            None if inq is None else inq if inq > 0 else 0,
            rtt / 1e6,
            min_rtt / 1e6,
            retransmits,
            retrans,
            fin == 1,
            data_segs_in,
            last_data_in,
        ),
    )


def _fin_in_close(sock: Any, our_fin_acked: bool, addresses: tuple[Any, Any] | None, final: bool) -> bool:
    """Whether the peer's FIN arrived, for a socket in CLOSE with its descriptor open.

    The state follows both FINs or a reset. Our FIN acknowledged: both FINs leave a TIME_WAIT
    entry for the 4-tuple, a reset none. Our FIN not sent: a reset; one that came after the
    peer's FIN (CLOSE_WAIT, a stale keep-alive connection written to) leaves the FIN's own
    segment in the receive queue until it is read as end-of-file (_fin_queued), and the error
    EPIPE, read (and so taken) only at the last close. A FIN read already, or one that came on
    the last data's segment and was read with it, leaves nothing else that a live reading may
    take without taking the program's pending error with it: it counts then as no FIN.
    """
    if our_fin_acked:
        return addresses is not None and time_wait(_family_of(sock), *addresses) is True
    if _fin_queued(sock):
        return True
    if final:
        return bool(_getsockopt(sock, socket.SOL_SOCKET, socket.SO_ERROR) == errno.EPIPE)
    return False


_SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux 3.18: SK_MEMINFO_RMEM_ALLOC first


def _fin_queued(sock: Any) -> bool:
    """Whether the peer's FIN waits in the receive queue with nothing before it to read: no byte
    unread (SIOCINQ leaves a FIN out), yet a segment still holds receive memory."""
    try:
        unread: int = _INQ.unpack(_ioctl(sock.fileno(), SIOCINQ, _NO_BYTES))[0]
        queued: int = struct.unpack_from("I", _getsockopt(sock, _SOL_SOCKET, _SO_MEMINFO, 36))[0]
    except (OSError, ValueError, TypeError, struct.error):
        return False
    return unread == 0 and queued > 0


_family_of = _socket.socket.family.__get__


time_wait = _diag.time_wait
