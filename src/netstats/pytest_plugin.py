"""pytest plugin: per-test network reports and budgets (inactive unless asked).

Installed with netstats as the ``pytest11`` entry point ``netstats``. Without one of the flags
below, a ``netstats`` marker or the ``netstats`` fixture in use, it starts no capture, patches
nothing and prints nothing.

- ``pytest --netstats``: a "netstats" section in the terminal summary with one row per test that
  touched the network (tx, rx, TLS overhead, connections, hosts), busiest first, and a total row.
  ``--netstats-top N`` shows the N busiest rows only. ``--netstats-json FILE`` writes the data.
- ``@pytest.mark.netstats(max_tx=, max_rx=, max_connections=, allow_hosts=[...])``: a test over
  budget, or that tried to reach a host not allowed (a refused or blocked attempt included), fails
  naming the offending connections; over budget only by its teardown, it errs at teardown; a test
  that failed on its own reports that failure. ``allow_hosts`` takes names, addresses and CIDR
  ranges; ``localhost``, 127.0.0.0/8 and ::1 are one host; Unix sockets and unconnected UDP are
  always allowed. ``max_connections`` counts the connections the test opened that connected
  (failed attempts are listed, not counted). A class or module marker gives defaults that a
  closer one overrides, argument by argument.
- ``--netstats-block``: a connect to a host outside the running test's ``allow_hosts`` raises
  `NetstatsBlocked` (a ConnectionRefusedError, errno ECONNREFUSED) before it is made. The name
  lookup before it still happens, and wider-scoped fixtures are never blocked.
- the ``netstats`` fixture: the test's own `netstats.Capture`, active from the start of the
  test's setup to the end of its teardown (``netstats.tx``, ``.connections``, ``netstats.mark``).

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

xdist. Each worker keeps its ledger and sends its rows in ``workeroutput["netstats"]``; the
controller merges rows by name (a session fixture that ran on two workers is one row with both
shares), prints the summary and writes the JSON. Verdicts are given in the worker, by the test.

JSON (``--netstats-json``)::

    {"version": 1,
     "totals": {"tx": int, "rx": int, "tls_overhead": int, "connections": int, "tests": int},
     "rows": [                                  # every test run, network or not, by name
       {"name": "test_x.py::test_y",            # a nodeid, or "<... fixtures ...>", "<outside tests>"
        "kind": "test" | "fixtures" | "outside",
        "tx": int, "rx": int,                   # application bytes moved in this row's windows
        "tls_overhead": int,                    # TLS bytes on the wire beyond them (Linux)
        "connections": [
          {"id": int, "pid": int, "transport": "tcp" | "udp" | "unix",
           "host": str | null, "remote": [address, port] | str | null, "tls": str | null,
           "error": str | null,                 # a failed or blocked connect: the exception's name
           "opened_here": bool,                 # opened in this row's windows (else earlier)
           "tx": int, "rx": int,                # its bytes in this row's windows
           "wire_tx": int, "wire_rx": int,      # its TCP stream bytes then (0 where unknown)
           "tls_overhead": int,
           "origin": str | null, "caller": str | null}]}]}
"""

from __future__ import annotations

import errno
import ipaddress
import json
import threading
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from netstats import Capture, Connection
from netstats._errors import NetstatsBlocked

OUTSIDE = "<outside tests>"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
BUDGETS = ("max_tx", "max_rx", "max_connections")
MARKER = (
    "netstats(max_tx=None, max_rx=None, max_connections=None, allow_hosts=None): fail the test if it "
    "moves more bytes or opens more connections than given, or reaches a host not in allow_hosts "
    "(names, addresses, CIDR ranges)."
)


# ---- flags, marker, fixture -------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netstats", "network use per test (netstats)")
    group.addoption("--netstats", action="store_true", help="report each test's connections and bytes.")
    group.addoption("--netstats-top", type=int, metavar="N", help="report only the N busiest rows.")
    group.addoption("--netstats-json", metavar="FILE", help="write the per-test data to FILE as JSON.")
    group.addoption(
        "--netstats-block",
        action="store_true",
        help="refuse, before it is made, a connect to a host outside the test's allow_hosts.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    top = config.getoption("netstats_top")
    if top is not None and top < 1:
        raise pytest.UsageError("--netstats-top needs a number of rows >= 1")
    config.pluginmanager.register(NetstatsPlugin(config), "netstats-plugin")


@pytest.fixture(name="netstats")
def netstats_fixture(request: pytest.FixtureRequest) -> Capture:
    """The test's Capture, active from the start of its setup to the end of its teardown."""
    state: TestState | None = request.node.stash.get(_STATE, None)
    if state is not None and state.capture is not None:
        return state.capture
    cap = Capture().start()  # requested late, through request.getfixturevalue
    request.addfinalizer(cap.stop)
    return cap


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
    """Names, addresses and CIDR ranges; "localhost", 127.0.0.0/8 and ::1 allow one another."""

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
                    self.networks.extend(LOOPBACK)
                continue
            self.networks.append(net)
            if any(net.version == lo.version and net.overlaps(lo) for lo in LOOPBACK):  # type: ignore[arg-type]
                self.networks.extend(LOOPBACK)
                self.names.add("localhost")

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
    def of(cls, item: pytest.Item) -> Budget | None:
        """None without a marker; ValueError naming a wrong argument."""
        markers = list(item.iter_markers("netstats"))
        if not markers:
            return None
        kwargs: dict[str, Any] = {}
        for marker in markers:  # closest first
            if marker.args:
                raise ValueError("@pytest.mark.netstats takes keyword arguments only")
            for key, value in marker.kwargs.items():
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

    def verdict(self, name: str, shares: list[Share]) -> str | None:
        """None if the test kept to its budget, else a message naming the offending connections."""
        problems: list[tuple[str, list[Share]]] = []
        for key, what in (("max_tx", "tx"), ("max_rx", "rx")):
            limit: int | None = getattr(self, key)
            used = sum(getattr(s, what) for s in shares)
            if limit is not None and used > limit:
                culprits = sorted((s for s in shares if getattr(s, what)), key=lambda s: -getattr(s, what))
                problems.append((f"{what} {used:,} bytes > {key}={limit:,}", culprits))
        opened = [s for s in shares if s.opened_here and s.conn.error is None]
        if self.max_connections is not None and len(opened) > self.max_connections:
            problems.append((f"{len(opened)} connections > max_connections={self.max_connections}", opened))
        if self.allow is not None:
            banned = [s for s in shares if not self.allow.allows(s.conn)]
            if banned:
                problems.append((f"host not in allow_hosts={self.allow.entries}", banned))
        if not problems:
            return None
        lines = [f"netstats: {name} broke its network budget"]
        for problem, culprits in problems:
            lines.append(f"  {problem}:")
            lines.extend(f"    {s.describe()}" for s in culprits)
        return "\n".join(lines)


# ---- the ledger: one Capture cut into windows ---------------------------------------------


def _peer(conn: Connection) -> str:
    """'host:port', with the address after a name: 'localhost:8080 (127.0.0.1)', '[::1]:8080'."""
    remote = conn.remote
    if not isinstance(remote, tuple):
        return str(remote if remote is not None else conn.host or f"{conn.transport} (no peer)")
    addr, port = str(remote[0]), remote[1]
    if conn.host and conn.host != addr:
        return f"{conn.host}:{port} ({addr})"
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(eq=False)
class Share:
    """One connection's part in one owner's windows."""

    conn: Connection
    tx: int = 0
    rx: int = 0
    wire_tx: int = 0  # TCP stream bytes, where the kernel tells (Linux)
    wire_rx: int = 0
    opened_here: bool = False

    @property
    def tls_overhead(self) -> int:
        """TLS records and handshake: wire bytes beyond the application's, in these windows."""
        if not self.conn.tls or not (self.wire_tx or self.wire_rx):
            return 0
        return self.wire_tx + self.wire_rx - self.tx - self.rx

    def describe(self) -> str:
        error = f" ({self.conn.error})" if self.conn.error else ""
        return f"{_peer(self.conn)}{error} tx={self.tx:,} rx={self.rx:,} opened at {self.conn.origin}"

    def as_dict(self) -> dict[str, Any]:
        c = self.conn
        remote = list(c.remote) if isinstance(c.remote, tuple) else c.remote
        return dict(
            id=c.id, pid=c.pid, transport=c.transport, host=c.host, remote=remote, tls=c.tls,
            error=c.error, opened_here=self.opened_here, tx=self.tx, rx=self.rx,
            wire_tx=self.wire_tx, wire_rx=self.wire_rx, tls_overhead=self.tls_overhead,
            origin=c.origin, caller=c.caller,
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
            rx, tx = conn.totals()  # since open, never reset by the user
            info = conn.tcp_info() if conn.transport == "tcp" else None  # the kernel's, for TLS overhead
            wire_rx, wire_tx = (info.wire_rx, info.wire_tx) if info is not None else (seen[3], seen[4])
            if (rx, tx, wire_rx, wire_tx) != tuple(seen[1:]):
                share = self._share(owner, conn)
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
                f"netstats --netstats-block: connect to {_peer(conn)} refused: not in "
                f"allow_hosts={window.allow.entries} of {window.owner}",
            )


def _kind(owner: str) -> str:
    return "outside" if owner == OUTSIDE else "fixtures" if owner.startswith("<") else "test"


def _row(owner: str, shares: list[Share]) -> dict[str, Any]:
    tx, rx = sum(s.tx for s in shares), sum(s.rx for s in shares)
    overhead = sum(s.tls_overhead for s in shares)
    connections = [s.as_dict() for s in shares]
    return dict(name=owner, kind=_kind(owner), tx=tx, rx=rx, tls_overhead=overhead, connections=connections)


def _merge(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per name (xdist workers may each report a fixture), sorted by name."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        into = merged.setdefault(row["name"], {**row, "tx": 0, "rx": 0, "tls_overhead": 0, "connections": []})
        into["tx"] += row["tx"]
        into["rx"] += row["rx"]
        into["tls_overhead"] += row["tls_overhead"]
        into["connections"] += row["connections"]
    return [merged[name] for name in sorted(merged)]


def _fixtures_owner(scope: str, request: pytest.FixtureRequest) -> str:
    return "<session fixtures>" if scope == "session" else f"<{scope} fixtures of {request.node.nodeid}>"


# ---- behaviour --------------------------------------------------------------------------


@dataclass(eq=False)
class TestState:
    ledger: Ledger | None
    own_ledger: bool
    budget: Budget | None
    window: Window | None = None
    capture: Capture | None = None
    judged: bool = False  # the call kept to the budget: teardown is judged too


_STATE = pytest.StashKey[TestState]()


@dataclass(eq=False)
class NetstatsPlugin:
    config: pytest.Config
    rows: list[dict[str, Any]] = field(default_factory=list)
    session_ledger: Ledger | None = None
    current: Ledger | None = None  # the ledger wider-scoped fixtures report to now

    @property
    def reporting(self) -> bool:
        return bool(self.config.getoption("netstats") or self.config.getoption("netstats_json"))

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @property
    def is_controller(self) -> bool:
        return self.config.pluginmanager.has_plugin("dsession")

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.reporting and not self.is_controller:
            self.session_ledger = self.current = Ledger(self.config.getoption("netstats_block")).start()

    @pytest.hookimpl(trylast=True)  # after pytest's own teardown of what a -x run left set up
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.session_ledger is not None:
            self.session_ledger.stop()
            self.rows += self.session_ledger.rows()
            self.session_ledger = self.current = None
        if self.is_worker:
            self.config.workeroutput["netstats"] = self.rows  # type: ignore[attr-defined]
        elif self.config.getoption("netstats_json"):
            rows = _merge(self.rows)
            path = self.config.invocation_params.dir / self.config.getoption("netstats_json")
            with open(path, "w", encoding="utf-8") as out:
                json.dump({"version": 1, "totals": _totals(rows), "rows": rows}, out, indent=1)
                out.write("\n")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.rows += getattr(node, "workeroutput", {}).get("netstats", [])

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            budget, wrong = Budget.of(item), None
        except ValueError as exc:  # reported after pytest's own setup, which must run
            budget, wrong = None, exc
        ledger, own = self.session_ledger, False
        if ledger is None and budget is not None:
            ledger, own = Ledger(self.config.getoption("netstats_block")).start(), True
        state = item.stash[_STATE] = TestState(ledger, own, budget)
        if ledger is not None:
            self.current = ledger
            state.window = ledger.enter(item.nodeid, budget.allow if budget else None)
        if "netstats" in getattr(item, "fixturenames", ()):
            state.capture = Capture().start()
        result = yield
        if wrong is not None:
            pytest.fail(f"{item.nodeid}: {wrong}", pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        result = yield  # raises if the test failed: its own failure is the one to report
        state = item.stash.get(_STATE, None)
        if state is not None:
            self._judge(item, state)  # setup and call so far
            state.judged = True
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        state = item.stash.get(_STATE, None)
        try:
            result = yield
        finally:
            if state is not None:
                self._end_test(state)
        if state is not None and state.judged:
            self._judge(item, state)  # did teardown take it over budget?
        return result

    def _judge(self, item: pytest.Item, state: TestState) -> None:
        if state.budget is not None and state.ledger is not None:
            message = state.budget.verdict(item.nodeid, state.ledger.shares(item.nodeid))
            if message:
                pytest.fail(message, pytrace=False)

    def _end_test(self, state: TestState) -> None:
        if state.capture is not None:
            state.capture.stop()
        if state.ledger is not None and state.window is not None:
            state.ledger.leave(state.window)
        if state.own_ledger and state.ledger is not None:
            state.ledger.stop()
            self.current = None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
        if self.current is None or fixturedef.scope == "function":
            return (yield)
        owner = _fixtures_owner(fixturedef.scope, request)
        # Finalizers run last-added first: `begin` before the fixture's own teardown, `end` after.
        teardown: list[tuple[Ledger, Window]] = []

        def end() -> None:
            while teardown:
                ledger, window = teardown.pop()
                ledger.leave(window)

        def begin() -> None:
            if self.current is not None:
                teardown.append((self.current, self.current.enter(owner)))

        fixturedef.addfinalizer(end)
        ledger = self.current
        window = ledger.enter(owner)
        try:
            return (yield)
        finally:
            ledger.leave(window)
            fixturedef.addfinalizer(begin)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.is_worker or not self.reporting:
            return
        if self.config.getoption("netstats"):
            _summary(terminalreporter, _merge(self.rows), self.config.getoption("netstats_top"))
        if self.config.getoption("netstats_json"):
            terminalreporter.write_line(
                f"netstats: per-test data written to {self.config.getoption('netstats_json')}"
            )


# ---- the summary ------------------------------------------------------------------------


def _totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(
        tx=sum(r["tx"] for r in rows),
        rx=sum(r["rx"] for r in rows),
        tls_overhead=sum(r["tls_overhead"] for r in rows),
        connections=sum(len(r["connections"]) for r in rows),
        tests=sum(1 for r in rows if r["kind"] == "test"),
    )


def _hosts(row: dict[str, Any], most: int = 3) -> str:
    def label(c: dict[str, Any]) -> str:
        remote = c["remote"]
        if isinstance(remote, list):
            return f"{c['host'] or remote[0]}:{remote[1]}"
        return str(remote if remote is not None else c["host"] or c["transport"])

    names = sorted({label(c) for c in row["connections"]})
    more = f" (+{len(names) - most})" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _summary(tr: pytest.TerminalReporter, rows: list[dict[str, Any]], top: int | None) -> None:
    tr.write_sep("=", "netstats: network use per test")
    busy = sorted((r for r in rows if r["connections"]), key=lambda r: (-(r["tx"] + r["rx"]), r["name"]))
    if not busy:
        tr.write_line("no test touched the network")
        return
    shown = busy[:top] if top else busy
    width = max(len(r["name"]) for r in shown)
    tr.write_line(f"{'tx':>12} {'rx':>12} {'tls+':>8} {'conns':>5}  {'test':<{width}}  hosts")
    for r in shown:
        tls = f"{r['tls_overhead']:>8,}" if r["tls_overhead"] else f"{'-':>8}"
        line = f"{r['tx']:>12,} {r['rx']:>12,} {tls} {len(r['connections']):>5}  {r['name']:<{width}}"
        tr.write_line(f"{line}  {_hosts(r)}".rstrip())
    if len(busy) > len(shown):
        tr.write_line(f"... {len(busy) - len(shown)} more row(s) not shown (--netstats-top {top})")
    t = _totals(rows)
    used = f"{sum(1 for r in busy if r['kind'] == 'test')} of {t['tests']} tests used the network"
    tls = f"{t['tls_overhead']:>8,}" if t["tls_overhead"] else f"{'-':>8}"
    tr.write_line(f"{t['tx']:>12,} {t['rx']:>12,} {tls} {t['connections']:>5}  total ({used})")
