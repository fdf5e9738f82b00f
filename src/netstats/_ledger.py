"""What the pytest plugin counts and judges, with no pytest in it: windows, shares, budgets.

Attribution. One Capture (a `Ledger`) is cut into windows, each with an owner: a test, from the
start of its setup to the end of its teardown (its function-scoped fixtures included), or
"<module fixtures of test_x.py>" (class, package, "<session fixtures>") while a wider-scoped
fixture sets up or tears down, even inside a test's setup, or "<outside tests>" (collection).
At every window change the ledger reads each live connection's byte totals; the bytes moved
since the previous reading count for the owner of the window that was open. So a connection a
session fixture opened (a pooled client, say) charges each test for the bytes the test moved on
it. Bytes moved by other threads count for the window open at the time. With ``--netstats`` or
``--netstats-json`` one ledger spans the session, from pytest_sessionstart; otherwise a test
with a marker gets its own ledger for its window, which sees only connections opened in it.
"""

from __future__ import annotations

import errno
import ipaddress
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._capture import Capture
from ._errors import NetstatsBlocked
from ._format import address
from ._record import Connection

OUTSIDE = "<outside tests>"
LOCALHOST = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
BUDGETS = ("max_tx", "max_rx", "max_connections")

# ---- allow_hosts and budgets ------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class AllowHosts:
    """Names, addresses and CIDR ranges. An address written out matches only itself, a range
    only its addresses; the name "localhost" also stands for 127.0.0.1 and ::1."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = [str(e) for e in entries]
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in self.entries:
            text = entry.strip().lower().rstrip(".")
            try:
                net = ipaddress.ip_network(text.strip("[]"), strict=False)
            except ValueError:
                self.names.add(text)
                if text == "localhost":
                    self.networks.extend(LOCALHOST)
                continue
            self.networks.append(net)

    def allows(self, conn: Connection) -> bool:
        """Unix sockets are always allowed, and so is a socket with no peer (unconnected UDP)."""
        if conn.transport == "unix" or (conn.remote is None and conn.host is None):
            return True
        if conn.host is not None and conn.host.lower().rstrip(".") in self.names:
            return True
        addr = _ip(conn.remote[0]) if isinstance(conn.remote, tuple) else None
        return addr is not None and any(addr in net for net in self.networks)


@dataclass(frozen=True)
class Budget:
    """The merged arguments of a test's netstats markers: the closest marker wins per argument."""

    max_tx: int | None = None
    max_rx: int | None = None
    max_connections: int | None = None
    allow: AllowHosts | None = None

    @classmethod
    def from_markers(cls, markers: Iterable[tuple[tuple[Any, ...], Mapping[str, Any]]]) -> Budget | None:
        """The (args, kwargs) of a test's markers, closest first: None without one; ValueError
        naming a wrong argument."""
        markers = list(markers)
        if not markers:
            return None
        kwargs: dict[str, Any] = {}
        for args, marker_kwargs in markers:  # closest first
            if args:
                raise ValueError("@pytest.mark.netstats takes keyword arguments only")
            for key, value in marker_kwargs.items():
                kwargs.setdefault(key, value)
        unknown = set(kwargs) - {*BUDGETS, "allow_hosts"}
        if unknown:
            valid = ", ".join((*BUDGETS, "allow_hosts"))
            raise ValueError(f"unknown netstats marker argument(s) {sorted(unknown)}; valid: {valid}")
        for key in BUDGETS:
            value = kwargs.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"netstats {key} must be an int >= 0, not {value!r}")
        hosts = kwargs.pop("allow_hosts", None)
        if isinstance(hosts, str):
            hosts = [h for h in hosts.split(",") if h.strip()]
        return cls(**kwargs, allow=None if hosts is None else AllowHosts(hosts))

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_tx": self.max_tx,
            "max_rx": self.max_rx,
            "max_connections": self.max_connections,
            "allow_hosts": None if self.allow is None else list(self.allow.entries),
        }

    def check(self, shares: list[Share]) -> list[Problem]:
        """What breaks the budget (nothing: kept to it): a limit gone over, a host not allowed,
        or a limit on bytes nobody could count (never passed on a guess)."""
        problems: list[Problem] = []
        for key, what in (("max_tx", "tx"), ("max_rx", "rx")):
            limit: int | None = getattr(self, key)
            if limit is None:
                continue
            # Where netstats cannot know a connection's application bytes, its wire bytes bound them.
            vague = [s for s in shares if not s.known]
            bounds = [s.bound(what) for s in vague]
            if None in bounds:
                unknown = [s for s, b in zip(vague, bounds, strict=True) if b is None]
                text = f"{what} of {len(unknown)} connection(s) not known: {key} cannot be checked"
                problems.append(Problem(NOT_MEASURED, text, unknown))
                continue
            used = sum(getattr(s, what) for s in shares if s.known)
            most = used + sum(b for b in bounds if b is not None)
            if most > limit:
                culprits = sorted((s for s in shares if s.bound(what)), key=lambda s: -(s.bound(what) or 0))
                told = f"{used:,} bytes" if not vague else f"{used:,} bytes + up to {most - used:,} not known"
                # Over the limit only with the bounds: perhaps within it, not known.
                kind = OVER if used > limit else NOT_MEASURED
                problems.append(Problem(kind, f"{what} {told} > {key}={limit:,}", culprits))
        opened = [s for s in shares if s.opened_here and s.conn.error is None]
        if self.max_connections is not None and len(opened) > self.max_connections:
            text = f"{len(opened)} connections > max_connections={self.max_connections}"
            problems.append(Problem(OVER, text, opened))
        if self.allow is not None:
            banned = [s for s in shares if not self.allow.allows(s.conn)]
            if banned:
                problems.append(Problem(NOT_ALLOWED, f"host not in allow_hosts={self.allow.entries}", banned))
        return problems

    def verdict(
        self, name: str, shares: list[Share], place: Callable[[Share], str | None] | None = None
    ) -> str | None:
        """None if the test kept to its budget, else a message naming the offending connections,
        each with where it was opened: place(share), by default the connection's origin."""
        problems = self.check(shares)
        if not problems:
            return None
        lines = [f"netstats: {name} broke its network budget"]
        for problem in problems:
            lines.append(f"  {problem.text}:")
            lines.extend(f"    {s.describe(place(s) if place else None)}" for s in problem.culprits)
        return "\n".join(lines)


OVER, NOT_ALLOWED, NOT_MEASURED = "over budget", "host not allowed", "not measured"


@dataclass(frozen=True)
class Problem:
    """One way a test broke its budget: its kind (OVER, NOT_ALLOWED, NOT_MEASURED), the line
    that says it, the connections it is about."""

    kind: str
    text: str
    culprits: list[Share]


# ---- the ledger: one Capture cut into windows ---------------------------------------------


def describe_peer(conn: Connection) -> str:
    """'host:port', with the address after a name: 'localhost:8080 (127.0.0.1)', '[::1]:8080'."""
    remote = conn.remote
    if not isinstance(remote, tuple):
        return str(remote if remote is not None else conn.host or f"{conn.transport} (no peer)")
    if conn.host and conn.host != str(remote[0]):
        return f"{conn.host}:{remote[1]} ({remote[0]})"
    return address(remote)


@dataclass(eq=False)
class Share:
    """One connection's part in one owner's windows."""

    conn: Connection
    tx: int = 0
    rx: int = 0
    wire_tx: int = 0  # TCP stream bytes, where the kernel tells (Linux): see has_wire
    wire_rx: int = 0
    opened_here: bool = False
    has_wire: bool = False  # the kernel's figures were read for this connection

    @property
    def known(self) -> bool:
        """netstats counted the application's bytes (a connection found by the kernel census
        has wire bytes only: its tx/rx here stay 0 and are shown as unknown)."""
        return self.conn.source == "python"

    def bound(self, what: str) -> int | None:
        """The most application bytes this share can have moved: its count, or where that is
        not known its wire bytes (TLS only adds bytes to the wire); None if neither is known."""
        if self.known:
            return int(getattr(self, what))
        return int(getattr(self, f"wire_{what}")) if self.has_wire else None

    @property
    def tls_overhead(self) -> int:
        """TLS records and handshake: wire bytes beyond the application's, in these windows."""
        if not self.conn.tls or not (self.wire_tx or self.wire_rx):
            return 0
        return self.wire_tx + self.wire_rx - self.tx - self.rx

    def describe(self, place: str | None = None) -> str:
        """One line: peer, counts, and where it was opened (`place`, else its origin)."""
        error = f" ({self.conn.error})" if self.conn.error else ""
        if self.known:
            counts = f"tx={self.tx:,} rx={self.rx:,}"
        elif self.has_wire:
            counts = f"tx=? rx=? (C code: wire tx={self.wire_tx:,} rx={self.wire_rx:,})"
        else:
            counts = "tx=? rx=? (C code)"
        return f"{describe_peer(self.conn)}{error} {counts} opened at {place or self.conn.origin or '?'}"

    def as_dict(self) -> dict[str, Any]:
        c = self.conn
        remote = list(c.remote) if isinstance(c.remote, tuple) else c.remote
        return dict(
            id=c.id, pid=c.pid, transport=c.transport, host=c.host, remote=remote, tls=c.tls,
            source=c.source, error=c.error, opened_here=self.opened_here,
            tx=self.tx if self.known else None, rx=self.rx if self.known else None,
            wire_tx=self.wire_tx if self.has_wire else None,
            wire_rx=self.wire_rx if self.has_wire else None,
            tls_overhead=self.tls_overhead, origin=c.origin, caller=c.caller,
        )  # fmt: skip


@dataclass(eq=False)
class Window:
    owner: str
    allow: AllowHosts | None = None


class Ledger:
    """Counts each byte for the owner of the window open when it moved (see the module doc)."""

    def __init__(self, block: bool) -> None:
        self.capture = Capture(self._opened, events={"open"}, keep=False)
        if block:
            self.capture.set_gate(self._gate)
        self.usage: dict[str, dict[int, Share]] = {}
        self._lock = threading.RLock()
        self._stack = [Window(OUTSIDE)]
        self._seen: dict[int, list[Any]] = {}  # conn id -> [conn, rx, tx, wire_rx, wire_tx] last read

    def start(self) -> Ledger:
        self.capture.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._read()
            self.capture.stop()

    def enter(self, owner: str, allow: AllowHosts | None = None) -> Window:
        with self._lock:
            self._read()
            self.usage.setdefault(owner, {})
            window = Window(owner, allow)
            self._stack.append(window)
            return window

    def leave(self, window: Window) -> None:
        with self._lock:
            self._read()
            if window in self._stack:
                self._stack.remove(window)

    def shares(self, owner: str) -> list[Share]:
        with self._lock:
            self._read()
            return list(self.usage.get(owner, {}).values())

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            self._read()
            return [_row(owner, list(shares.values())) for owner, shares in self.usage.items()]

    def _share(self, owner: str, conn: Connection) -> Share:
        shares = self.usage.setdefault(owner, {})
        if conn.id not in shares:
            shares[conn.id] = Share(conn)
        return shares[conn.id]

    def _opened(self, event: str, conn: Connection, nbytes: int | None) -> None:
        with self._lock:
            self._seen[conn.id] = [conn, 0, 0, 0, 0]
            self._share(self._stack[-1].owner, conn).opened_here = True

    def _read(self) -> None:
        """Count the bytes moved since the last reading for the window now open."""
        owner = self._stack[-1].owner
        for conn_id, seen in list(self._seen.items()):
            conn: Connection = seen[0]
            closed = conn.closed is not None  # read before the totals: they are final after close
            rx, tx = conn.totals()  # since open, never reset by the user; None if not known
            rx, tx = rx or 0, tx or 0
            info = conn.tcp_info() if conn.transport == "tcp" else None  # the kernel's, for TLS overhead
            wire_rx, wire_tx = (info.wire_rx, info.wire_tx) if info is not None else (seen[3], seen[4])
            if (rx, tx, wire_rx, wire_tx) != tuple(seen[1:]):
                share = self._share(owner, conn)
                share.has_wire = share.has_wire or info is not None
                share.rx += rx - seen[1]
                share.tx += tx - seen[2]
                share.wire_rx += wire_rx - seen[3]
                share.wire_tx += wire_tx - seen[4]
                seen[1:] = rx, tx, wire_rx, wire_tx
            if closed:
                del self._seen[conn_id]

    def _gate(self, conn: Connection) -> None:
        __tracebackhide__ = True
        window = self._stack[-1]
        if window.allow is not None and not window.allow.allows(conn):
            raise NetstatsBlocked(
                errno.ECONNREFUSED,
                f"netstats --netstats-block: connect to {describe_peer(conn)} refused: not in "
                f"allow_hosts={window.allow.entries} of {window.owner}",
            )


def _kind(owner: str) -> str:
    return "outside" if owner == OUTSIDE else "fixtures" if owner.startswith("<") else "test"


def _row(owner: str, shares: list[Share]) -> dict[str, Any]:
    tx, rx = sum(s.tx for s in shares), sum(s.rx for s in shares)
    overhead = sum(s.tls_overhead for s in shares)
    connections = [s.as_dict() for s in shares]
    unknown = sum(1 for s in shares if not s.known)  # connections whose tx/rx are not in tx, rx
    return dict(
        name=owner, kind=_kind(owner), tx=tx, rx=rx, unknown=unknown, tls_overhead=overhead,
        connections=connections,
    )  # fmt: skip


def merge_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per name (xdist workers may each report a fixture), sorted by name."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        into = merged.setdefault(
            row["name"], {**row, "tx": 0, "rx": 0, "unknown": 0, "tls_overhead": 0, "connections": []}
        )
        into["tx"] += row["tx"]
        into["rx"] += row["rx"]
        into["unknown"] += row.get("unknown", 0)
        into["tls_overhead"] += row["tls_overhead"]
        into["connections"] += row["connections"]
    return [merged[name] for name in sorted(merged)]


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(
        tx=sum(r["tx"] for r in rows),
        rx=sum(r["rx"] for r in rows),
        unknown=sum(r.get("unknown", 0) for r in rows),
        tls_overhead=sum(r["tls_overhead"] for r in rows),
        connections=sum(len(r["connections"]) for r in rows),
        tests=sum(1 for r in rows if r["kind"] == "test"),
    )
