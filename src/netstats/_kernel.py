"""Linux's own figures for a TCP socket: wire bytes, round-trip times, retransmissions.

Read with one getsockopt(TCP_INFO) and one ioctl(SIOCINQ) — at close, on a live stats() call,
never per read or write. Offsets are those of `struct tcp_info` in linux/tcp.h; the length the
kernel returns says which fields exist (bytes_sent/bytes_retrans need Linux 4.19). Anywhere
else (other platforms, UDP, Unix sockets, older kernels) `read()` returns None: the fields are
None, never a guess.
"""

from __future__ import annotations

import _socket
import os
import socket
import struct
import sys
from typing import Any, NamedTuple

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

TCP_INFO = getattr(socket, "TCP_INFO", None)
SIOCINQ = 0x541B  # FIONREAD on Linux: bytes received and not yet read (a received FIN excluded)
_NEEDED = 216  # through tcpi_bytes_retrans
_getsockopt: Any = _socket.socket.getsockopt
_INFO = struct.Struct("=B67xI28xI16xQQ8xII48xQQ")  # state, rtt, total_retrans, bytes_acked, ...
supported = sys.platform.startswith("linux") and TCP_INFO is not None and fcntl is not None

# A FIN from the peer has arrived in these states. CLOSE with the descriptor still open follows
# either both FINs (after shutdown) or a reset: read() tells them apart by our FIN's ack.
_CLOSE_WAIT, _LAST_ACK, _CLOSING, _TIME_WAIT, _CLOSE = 8, 9, 11, 6, 7
_FIN_RECEIVED = frozenset({_CLOSE_WAIT, _LAST_ACK, _CLOSING, _TIME_WAIT})


class TcpInfo(NamedTuple):
    """Kernel figures for one TCP connection, in bytes and seconds."""

    wire_rx: int  # bytes of the TCP stream received, read by the application or not
    wire_tx: int  # bytes of the TCP stream the application handed to the kernel
    unread: int  # received, not yet read by the application
    rtt: float  # smoothed round-trip time
    min_rtt: float  # lowest round-trip time seen
    retransmits: int  # segments retransmitted
    retrans_bytes: int  # bytes retransmitted


def _raw(sock: Any) -> tuple[int, ...] | None:
    raw = _getsockopt(sock, socket.IPPROTO_TCP, TCP_INFO, 232)
    return _INFO.unpack_from(raw) if len(raw) >= _NEEDED else None


def identity(sock: Any) -> int | None:
    """The kernel's identity of the socket behind sock's descriptor (its inode), or None.

    A descriptor number closed behind a socket object's back may be reused by another
    connection: a read checks this first, so a record never takes another socket's figures.
    """
    if not supported:
        return None
    try:
        return os.fstat(sock.fileno()).st_ino
    except (OSError, ValueError, TypeError):
        return None


def read(sock: Any, client: bool = True, ident: int | None = None) -> TcpInfo | None:
    """The kernel's figures for a live TCP socket, or None where they cannot be had.

    `client`: the socket connected (its SYN counts once in bytes_acked) rather than accepted.
    `ident`: the socket's identity() when its record began; another socket's figures are None.
    """
    if not supported:
        return None
    try:
        if ident is not None and os.fstat(sock.fileno()).st_ino != ident:
            return None
        # The kernel reads tcpi_state before it locks the socket, and SIOCINQ is another call:
        # take the figures only when two reads around the SIOCINQ agree (nothing arrived between).
        first = _raw(sock)
        for _ in range(5):
            if first is None:
                return None
            inq = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCINQ, b"\0\0\0\0"))[0]
            second = _raw(sock)
            if second is not None and second[0] == first[0] and second[4] == first[4]:
                break
            first = second
    except (OSError, ValueError, TypeError):
        return None
    if second is None:
        return None
    state, rtt, retransmits, acked, received, notsent, min_rtt, sent, retrans = second
    if state == _CLOSE:
        # Both FINs (our FIN acknowledged: bytes_acked is past the data, and the SYN when we
        # connected) or a reset (no FIN from the peer, as far as we can tell).
        fin = 1 if acked - (1 if client else 0) > sent - retrans else 0
    else:
        fin = 1 if state in _FIN_RECEIVED else 0
    return TcpInfo(
        wire_rx=max(0, received - fin),
        wire_tx=sent - retrans + notsent,
        unread=max(0, inq),
        rtt=rtt / 1e6,
        min_rtt=min_rtt / 1e6,
        retransmits=retransmits,
        retrans_bytes=retrans,
    )
