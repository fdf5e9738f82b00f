"""netstats' own descriptors, known by what they are rather than by their number.

A program may close descriptors it did not open (`os.closerange(3, 256)`, as daemonizing code
does) and the number may then name one of its own files or sockets. Every descriptor netstats
keeps open is remembered with its identity (device and inode, from fstat) when it is opened and
checked before each use: a number that now names something else is not netstats' any more, and
is never read, written or closed by it again (a socket object holding it is detached).
"""

from __future__ import annotations

import _socket
import logging
import os
from typing import Any

log = logging.getLogger("netstats")

Identity = tuple[int, int]  # (st_dev, st_ino)


def identity(fd: int) -> Identity | None:
    """What descriptor fd names now (device, inode), or None if it is closed."""
    try:
        st = os.fstat(fd)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def of_socket(sock: Any) -> Identity | None:
    """A socket object's identity (None once its descriptor is closed or detached)."""
    try:
        fd = sock.fileno()
    except (OSError, ValueError, AttributeError):
        return None
    return identity(fd) if fd >= 0 else None


def still_ours(sock: Any, known: Identity | None, what: str) -> bool:
    """True if sock's descriptor still names the socket netstats opened (identity `known`).

    If not, sock lets go of the number without closing it (it may be the program's now) and one
    line on the "netstats" logger says so; the caller makes a new one or stops that part."""
    if known is not None and of_socket(sock) == known:
        return True
    try:
        sock.detach()
    except (OSError, ValueError, AttributeError):
        pass
    log.warning(
        "netstats: its %s descriptor was closed by the program; netstats no longer uses that number", what
    )
    return False


class Socket(_socket.socket):
    """A socket of netstats' own (the C type: it never passes netstats' wrappers) that knows its
    identity from its creation. `ours()` right before each use; close() and garbage collection
    close its number only while it is still this socket's, else let it go."""

    __slots__ = ("known", "what")

    def __init__(self, family: int, type: int, proto: int, what: str) -> None:
        super().__init__(family, type, proto)
        self.known = identity(self.fileno())
        self.what = what  # what the log line calls it: "sock_diag query", "destroy feed"

    def ours(self) -> bool:
        """Whether its number still names it. The first time not, it is detached and one line
        logged; after that (or once closed) simply False."""
        return self.fileno() >= 0 and still_ours(self, self.known, self.what)

    def close(self) -> None:
        if self.ours():
            super().close()

    def __del__(self) -> None:
        # (No log line: this may run at interpreter exit.)
        if self.fileno() >= 0 and identity(self.fileno()) == self.known:
            super().close()
        else:
            self.detach()
