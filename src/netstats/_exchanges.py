"""Request/response exchanges on a connection, from the order of its reads and writes.

A client asks by writing and is answered by reading (a server the other way round): each run
of asking calls that follows an answer begins an exchange. An exchange is (sent, first_byte,
last_byte), wall-clock seconds: the end of its first asking call, of its first answering call
and of its last (None while unanswered). What a page draws as "waiting" and "receiving" on a
keep-alive connection carrying several requests.

Recorded only where netstats sees the calls (a capture made with exchanges=True keeps its
connections' wrappers on), and only the first MOST exchanges of a connection; bytes arriving
before anything was asked (a server's greeting) begin none.
"""

from __future__ import annotations

import time
from typing import Any

MOST = 1000  # exchanges kept per connection (3 floats each)


def seen(event: str, conn: Any) -> None:
    """A read or write (`event`) moved bytes on conn (a Connection)."""
    flat = conn._exchanges  # [sent, first_byte, last_byte, sent, ...], then None once full
    if flat is not None and len(flat) > 3 * MOST:
        return  # full: later turns are not kept, nor do their answers stretch the last one kept
    if (event == "write") == (conn.side == "client"):  # asking
        if flat is None:
            conn._exchanges = flat = []
        if not flat or flat[-2] is not None:
            if len(flat) < 3 * MOST:
                flat += (time.time(), None, None)
            else:
                flat.append(None)
    elif flat:
        now = time.time()
        if flat[-2] is None:
            flat[-2] = now
        flat[-1] = now


def of(conn: Any) -> list[list[float | None]] | None:
    """conn's exchanges as [sent, first_byte, last_byte] lists, or None where none were seen."""
    flat = conn._exchanges
    if not flat:
        return None
    return [flat[i : i + 3] for i in range(0, len(flat) - len(flat) % 3, 3)]
