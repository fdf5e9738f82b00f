"""`netstats top PID`: the TCP connections of any process the user owns, from the kernel alone.

The census's way (_sources/census.py) pointed at another process: the process's descriptors
(`/proc/PID/fd`, each socket link naming its inode), then one sock_diag dump per address family
(_diag.dump) with every socket's tcp_info, kept by inode. Nothing is asked of the process
itself, so it may be written in any language, and no privilege is needed: only the user's own
processes show their descriptors. The figures are the census's (wire bytes as everywhere in
netstats: stream bytes, the SYN and FIN not counted; rtt; retransmissions); the application's
bytes are not known here. Rates need two readings: a single snapshot has none (None, not 0).
A socket the process closed gets its final figures as the kernel destroys it (`Ends`: the
destroy notifications of sock_diag, matched by cookie, as the census does for its own).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, NamedTuple

from . import _diag, _format, _kernel
from ._errors import NetstatsError, NoSuchProcess

supported = _diag.supported and _kernel.supported and os.path.isdir("/proc/self/fd")

# linux/tcp_states.h
STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
}  # fmt: skip
_LISTEN = 10


class Socket(NamedTuple):
    """One TCP connection of the watched process, as the kernel reports it now."""

    cookie: int  # the kernel's id of the socket, for its life
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    side: str  # "server" when its local port is one the process listens on
    info: _kernel.TcpInfo | None  # None when the kernel gave no tcp_info


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets the process holds descriptors of; NoSuchProcess, with a line
    for people, when it is not there or not the user's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise NoSuchProcess(f"no process {pid}") from None
    except PermissionError:
        raise NoSuchProcess(f"process {pid} is not yours: only your own processes can be watched") from None
    if _zombie(pid):  # (its descriptors are gone, and unreadable: not "not yours")
        raise NoSuchProcess(f"process {pid} has ended (a zombie: its parent has not reaped it)")
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        raise NoSuchProcess(f"no process {pid}") from None
    except PermissionError:
        raise NoSuchProcess(
            f"cannot read the descriptors of process {pid} (not yours, or protected)"
        ) from None
    inodes = set()
    for name in names:
        try:
            link = os.readlink(f"{folder}/{name}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            inodes.add(int(link[8:-1]))
    return inodes


def _zombie(pid: int) -> bool:
    """Whether the process has ended and waits for its parent: state Z in /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    end = stat.rfind(b")")  # the state follows the command's name, which may hold ") "
    return stat[end + 2 : end + 3] == b"Z"


def snapshot(pid: int) -> list[Socket]:
    """The process's TCP connections now (its listeners left out), oldest descriptor order aside."""
    if not supported:
        raise NetstatsError("netstats top needs Linux (/proc and sock_diag)")
    inodes = socket_inodes(pid)
    found: list[_diag.Diag] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        diags = _diag.dump(family)
        if diags is None:
            raise NetstatsError("the kernel's sock_diag interface did not answer")
        found.extend(d for d in diags if d.inode and d.inode in inodes)
    listening = {d.local[1] for d in found if d.state == _LISTEN}
    out = []
    for d in found:
        if d.state == _LISTEN:
            continue
        side = "server" if d.local[1] in listening else "client"
        fields = _kernel.unpack(d.info) if d.info is not None else None
        info = _kernel.decode(fields, d.unread, side == "client") if fields is not None else None
        out.append(Socket(d.cookie, d.local, d.remote, STATES.get(d.state, str(d.state)), side, info))
    return out


class Rates:
    """Bytes per second of each connection between two readings (None at its first)."""

    def __init__(self) -> None:
        self._last: dict[Any, tuple[float, int, int]] = {}

    def update(
        self, readings: dict[Any, tuple[int | None, int | None]], now: float
    ) -> dict[Any, tuple[float | None, float | None]]:
        """{key: (rx, tx)} now -> {key: (rx per second, tx per second)}; keys gone are forgotten."""
        rates: dict[Any, tuple[float | None, float | None]] = {}
        last = self._last
        self._last = {}
        for key, (rx, tx) in readings.items():
            if rx is None or tx is None:
                rates[key] = (None, None)
                continue
            before = last.get(key)
            if before is not None and now > before[0]:
                span = now - before[0]
                rates[key] = (max(0, rx - before[1]) / span, max(0, tx - before[2]) / span)
            else:
                rates[key] = (None, None)
            self._last[key] = (now, rx, tx)
        return rates


class Ends:
    """The final figures of sockets that ended, from the kernel's destroy notifications (the
    feed has every TCP socket of the network namespace that dies: they are matched by cookie).
    A socket the process closed may linger a while (FIN_WAIT, unsent data) before it dies; with
    no feed (joining it failed) no final figures come at all."""

    def __init__(self) -> None:
        self._feed = _diag.destroy_feed()
        if self._feed is not None and not _diag.listen(self._feed, True):
            self._feed.close()
            self._feed = None

    def take(self, wanted: dict[int, Socket]) -> dict[int, _kernel.TcpInfo]:
        """{cookie: its final figures} of the wanted sockets (by cookie) that died since the
        last call."""
        if self._feed is None:
            return {}
        dead, _dropped = _diag.drain(self._feed, wanted)
        out = {}
        for diag in dead:
            fields = _kernel.unpack(diag.info) if diag.info is not None else None
            if fields is None:
                continue
            seen = wanted[diag.cookie]
            fin = _diag.fin_at_destroy(diag, seen.info is not None and seen.info.peer_fin)
            out[diag.cookie] = _kernel.decode(fields, diag.unread, seen.side == "client", fin)
        return out

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None


def as_json(pid: int, sockets: list[Socket], rates: dict[Any, Any] | None = None) -> dict[str, Any]:
    """One snapshot as plain data: {"pid", "time", "connections": [...]}, sizes in bytes,
    times in seconds, rates in bytes per second (None without an earlier reading)."""
    rows = []
    for s in sockets:
        info = s.info
        rx_rate, tx_rate = (rates or {}).get(s.cookie, (None, None))
        rows.append(
            {
                "local": list(s.local),
                "remote": list(s.remote),
                "state": s.state,
                "side": s.side,
                "wire_rx": info.wire_rx if info else None,
                "wire_tx": info.wire_tx if info else None,
                "unread": info.unread if info else None,
                "rtt": info.rtt if info else None,
                "min_rtt": info.min_rtt if info else None,
                "retransmits": info.retransmits if info else None,
                "retrans_bytes": info.retrans_bytes if info else None,
                "rx_rate": rx_rate,
                "tx_rate": tx_rate,
            }
        )
    return {"pid": pid, "time": time.time(), "connections": rows}


def rtt_text(rtt: float | None) -> str:
    """A round-trip time in milliseconds ("0.05 ms"); None is "?"."""
    return _format.UNKNOWN if rtt is None else f"{rtt * 1000:.2f} ms"


def as_text(pid: int, sockets: list[Socket]) -> str:
    """One snapshot as a plain table (no terminal library needed)."""
    head = ("remote", "local", "state", "wire rx", "wire tx", "rtt", "retrans")
    rows = [head]
    for s in sockets:
        info = s.info
        rows.append(
            (
                _format.address(s.remote),
                _format.address(s.local),
                s.state,
                _format.size(info.wire_rx if info else None),
                _format.size(info.wire_tx if info else None),
                rtt_text(info.rtt if info else None),
                str(info.retransmits) if info else _format.UNKNOWN,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"netstats top {pid}: {len(sockets)} TCP connection{'s' if len(sockets) != 1 else ''}"]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(w) if i < 3 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines).rstrip() + "\n"


def once(pid: int, fmt: str) -> str:
    """`netstats top PID --once`: one snapshot, as text or JSON."""
    sockets = snapshot(pid)
    if fmt == "json":
        return json.dumps(as_json(pid, sockets), indent=1) + "\n"
    return as_text(pid, sockets)
