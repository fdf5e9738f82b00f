"""pytest plugin: per-test network reports and budgets (inactive unless asked).

Installed with netstats as the ``pytest11`` entry point ``netstats``. Without one of the flags
below, a ``netstats`` marker or the ``netstats`` fixture in use, it starts no capture, patches
nothing and prints nothing.

- ``pytest --netstats``: a "netstats" section in the terminal summary with one row per test that
  touched the network (tx, rx, TLS overhead, connections, hosts), busiest first, and a total row.
  Sizes as in every netstats report (B, KiB, MiB); "?" where unknown, "-" where not applicable.
  ``--netstats-top N`` shows the N busiest rows only (with --netstats). ``--netstats-json FILE``
  writes the data (the path is checked at start-up).
- ``@pytest.mark.netstats(max_tx=, max_rx=, max_connections=, allow_hosts=[...])``: a test over
  budget, or that tried to reach a host not allowed (a refused or blocked attempt included), fails
  naming the offending connections; over budget only by its teardown, it errs at teardown; a test
  that failed on its own reports that failure. ``allow_hosts`` takes names, addresses and CIDR
  ranges: an address matches only itself, a range its addresses, and the name ``localhost`` also
  127.0.0.1 and ::1; Unix sockets and unconnected UDP are always allowed. ``max_connections``
  counts the connections the test opened that connected (failed attempts are listed, not
  counted). A class or module marker gives defaults that a
  closer one overrides, argument by argument.
- ``--netstats-block``: a connect to a host outside the running test's ``allow_hosts`` raises
  `NetstatsBlocked` (a ConnectionRefusedError, errno ECONNREFUSED) before it is made. The name
  lookup before it still happens; tests without ``allow_hosts`` and wider-scoped fixtures are
  never blocked.
- the ``netstats`` fixture: the test's own `netstats.Capture`, active from the start of the
  test's setup to the end of its teardown (``netstats.tx``, ``.connections``, ``netstats.mark``).

Attribution (which test a byte counts for) is described in netstats/_ledger.py, which counts.

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
           "origin": str | null, "caller": str | null}],
        # a test's own (kind "test"), judged over its setup, call and teardown:
        "verdict": "passed" | "over budget" | "host not allowed" | "not measured" | "no budget",
        "budget": {"max_tx", "max_rx", "max_connections": int | null,
                   "allow_hosts": [str] | null} | null,
        "measured": {"tx": int | null, "rx": int | null,    # null: some bytes nobody could count
                     "tx_at_most": int | null,              # those bounded by their wire bytes
                     "rx_at_most": int | null,              #   (null: not even those known)
                     "connections": int},                   # as max_connections counts them
        "problems": [str]}]}                    # what broke the budget, one line each

A budget on bytes netstats could not count is never passed: "not measured" (where the wire's
bytes do not bound them within it). A budget failure names, for each connection, the line in
the test's own file from which it was opened (the client library's frames are further in).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

from netstats import Capture, Connection
from netstats._errors import NetstatsBlocked
from netstats._format import LEGEND, NOT_APPLICABLE, UNKNOWN, clip, peer, short_frame, size, visible
from netstats._ledger import (
    NOT_ALLOWED,
    NOT_MEASURED,
    OVER,
    AllowHosts,
    Budget,
    Ledger,
    Share,
    Window,
    merge_rows,
    totals,
)
from netstats._report import unwritable, write

__all__ = ["AllowHosts", "Budget", "NetstatsBlocked", "NetstatsPlugin"]

MARKER = (
    "netstats(max_tx=None, max_rx=None, max_connections=None, allow_hosts=None): fail the test if it "
    "moves more bytes or opens more connections than given, or reaches a host not in allow_hosts "
    "(names, addresses, CIDR ranges; localhost is also 127.0.0.1 and ::1)."
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
    if top is not None and not config.getoption("netstats"):
        raise pytest.UsageError("--netstats-top limits the rows of --netstats's summary: add --netstats")
    path = config.getoption("netstats_json")
    if path is not None and not hasattr(config, "workerinput"):  # the controller writes it
        problem = unwritable(config.invocation_params.dir / path)  # not after the run: no data lost
        if problem:
            raise pytest.UsageError(f"--netstats-json {path}: {problem}")
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


def _budget_of(item: pytest.Item) -> Budget | None:
    return Budget.from_markers((m.args, m.kwargs) for m in item.iter_markers("netstats"))


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
    places: Places | None = None  # where in the test's file each connection was opened


_STATE = pytest.StashKey[TestState]()


@dataclass(eq=False)
class NetstatsPlugin:
    config: pytest.Config
    rows: list[dict[str, Any]] = field(default_factory=list)
    session_ledger: Ledger | None = None
    current: Ledger | None = None  # the ledger wider-scoped fixtures report to now
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # nodeid -> verdict(), for the JSON

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
            for row in self.session_ledger.rows():
                if row["kind"] == "test":
                    row.update(self.verdicts.get(row["name"], UNJUDGED))
                self.rows.append(row)
            self.session_ledger = self.current = None
        if self.is_worker:
            self.config.workeroutput["netstats"] = self.rows  # type: ignore[attr-defined]
        elif self.config.getoption("netstats_json"):
            rows = merge_rows(self.rows)
            path = self.config.invocation_params.dir / self.config.getoption("netstats_json")
            text = json.dumps({"version": 1, "totals": totals(rows), "rows": rows}, indent=1) + "\n"
            try:
                write(text, str(path))  # whole or not at all
            except OSError as exc:  # one line; the test run's outcome stands
                print(f"netstats: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.rows += getattr(node, "workeroutput", {}).get("netstats", [])

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            budget, wrong = _budget_of(item), None
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
        if budget is not None:
            state.places = Places(item).start()
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
                self._end_test(item, state)
        if state is not None and state.judged:
            self._judge(item, state)  # did teardown take it over budget?
        return result

    def _judge(self, item: pytest.Item, state: TestState) -> None:
        if state.budget is not None and state.ledger is not None:
            place = state.places.place if state.places is not None else None
            message = state.budget.verdict(item.nodeid, state.ledger.shares(item.nodeid), place)
            if message:  # (hosts, paths: names from outside, never sent to the terminal raw)
                pytest.fail("\n".join(visible(line) for line in message.split("\n")), pytrace=False)

    def _end_test(self, item: pytest.Item, state: TestState) -> None:
        if state.capture is not None:
            state.capture.stop()
        if state.places is not None:
            state.places.stop()
        if state.ledger is not None and state.window is not None:
            state.ledger.leave(state.window)
            if state.ledger is self.session_ledger:  # (the JSON's: made of the session's ledger)
                self.verdicts[item.nodeid] = verdict(state.budget, state.ledger.shares(item.nodeid))
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
            _summary(terminalreporter, merge_rows(self.rows), self.config.getoption("netstats_top"))
        if self.config.getoption("netstats_json"):
            terminalreporter.write_line(
                f"netstats: per-test data written to {self.config.getoption('netstats_json')}"
            )


# ---- where a connection was opened, and the verdict ---------------------------------------

DEPTH = 400  # frames looked through for the test's file, at most
# A test whose teardown never ran (nothing judged): no figures.
UNJUDGED: dict[str, Any] = {"verdict": "no budget", "budget": None, "measured": None, "problems": []}


class Places:
    """Where in the test's own file each connection of the test was opened: the innermost frame
    of that file in the opening thread's stack (the client library's frames, and any helper's,
    are further in), else (another thread, a fixture elsewhere, C code) the test itself and the
    connection's own caller."""

    def __init__(self, item: pytest.Item) -> None:
        self._files = {str(item.path), os.path.realpath(item.path)}  # as the module's code names it
        path, line, name = item.location
        self._path = path
        self._test = f"{name} ({path}:{(line or 0) + 1})"
        self._found: dict[int, str] = {}  # connection id -> "test_x.py:12 in test_y"
        self._capture = Capture(self._opened, events={"open"}, keep=False)

    def start(self) -> Places:
        self._capture.start()
        return self

    def stop(self) -> None:
        self._capture.stop()

    def _opened(self, event: str, conn: Connection, nbytes: int | None) -> None:
        frame = sys._getframe(1)
        for _ in range(DEPTH):
            if frame.f_code.co_filename in self._files:
                self._found[conn.id] = f"{self._path}:{frame.f_lineno} in {frame.f_code.co_name}"
                return
            if frame.f_back is None:
                return
            frame = frame.f_back

    def place(self, share: Share) -> str:
        found = self._found.get(share.conn.id)
        if found is not None:
            return found
        return f"{self._test}, at {short_frame(share.conn.caller or share.conn.origin)}"


def verdict(budget: Budget | None, shares: list[Share]) -> dict[str, Any]:
    """A test's verdict for the JSON: "passed" (every limit checked and kept), "over budget",
    "host not allowed", "not measured" (a limit on bytes nobody could count: never passed on
    a guess), or "no budget"; with the budget, the figures judged (tx/rx None where a
    connection's application bytes are not known; tx_at_most/rx_at_most bound them by the
    wire's) and the lines that say what broke it."""
    known = all(s.known for s in shares)
    measured: dict[str, int | None] = {}
    for what in ("tx", "rx"):
        bounds = [s.bound(what) for s in shares]
        measured[what] = sum(getattr(s, what) for s in shares) if known else None
        # the most it can be: unknown application bytes bounded by their wire bytes
        measured[f"{what}_at_most"] = None if None in bounds else sum(b or 0 for b in bounds)
    measured["connections"] = sum(1 for s in shares if s.opened_here and s.conn.error is None)
    if budget is None:
        return {"verdict": "no budget", "budget": None, "measured": measured, "problems": []}
    problems = budget.check(shares)
    kinds = {p.kind for p in problems}
    outcome = next((kind for kind in (OVER, NOT_ALLOWED, NOT_MEASURED) if kind in kinds), "passed")
    return {
        "verdict": outcome,
        "budget": budget.as_dict(),
        "measured": measured,
        "problems": [p.text for p in problems],
    }


# ---- the summary ------------------------------------------------------------------------


def _hosts(row: dict[str, Any], most: int = 3) -> str:
    def label(c: dict[str, Any]) -> str:
        return peer(c["host"], c["remote"]) if c["remote"] or c["host"] else c["transport"]

    names = sorted({visible(label(c)) for c in row["connections"]})
    more = f" (+{len(names) - most})" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _tls_plus(overhead: int | None, connections: list[dict[str, Any]]) -> str:
    """The TLS overhead: "-" with no TLS connection, "?" where the kernel did not tell."""
    return size(overhead) if any(c["tls"] for c in connections) else NOT_APPLICABLE


def _bytes(count: int, row: dict[str, Any]) -> str:
    """A size, "+?" after it when connections whose application bytes are not known (made by C
    code, found by the kernel census: the row's "unknown") add to it."""
    return size(count) + ("+?" if row.get("unknown") else "")


NAME_WIDTH = (
    80  # a longer test id is clipped to its end ("…/test_x.py::test_y[...]"): one does not widen every row
)


def _summary(tr: pytest.TerminalReporter, rows: list[dict[str, Any]], top: int | None) -> None:
    tr.write_sep("=", "netstats: network use per test")
    busy = sorted((r for r in rows if r["connections"]), key=lambda r: (-(r["tx"] + r["rx"]), r["name"]))
    if not busy:
        tr.write_line("no test touched the network")
        return
    shown = busy[:top] if top else busy
    names = {r["name"]: clip(visible(r["name"]), NAME_WIDTH) for r in shown}
    width = max(len(name) for name in names.values())
    cells: list[str] = []

    def line(row: dict[str, Any], tls: str, conns: int, name: str) -> str:
        figures = [_bytes(row["tx"], row), _bytes(row["rx"], row), tls]
        cells.extend(figures)
        return f"{figures[0]:>11} {figures[1]:>11} {tls:>10} {conns:>5}  {name}"

    tr.write_line(f"{'tx':>11} {'rx':>11} {'tls+':>10} {'conns':>5}  {'test':<{width}}  hosts")
    for r in shown:
        tls = _tls_plus(r["tls_overhead"], r["connections"])
        name = names[r["name"]].ljust(width)
        tr.write_line(f"{line(r, tls, len(r['connections']), name)}  {_hosts(r)}".rstrip())
    if len(busy) > len(shown):
        tr.write_line(f"... {len(busy) - len(shown)} more row(s) not shown (--netstats-top {top})")
    t = totals(rows)
    used = f"{sum(1 for r in busy if r['kind'] == 'test')} of {t['tests']} tests used the network"
    tls = _tls_plus(t["tls_overhead"], [c for r in rows for c in r["connections"]])
    tr.write_line(line(t, tls, t["connections"], f"total ({used})"))
    if t.get("unknown"):
        tr.write_line(
            f"+? : {t['unknown']} connection(s) made by C code (source kernel): their application bytes "
            "are not known, only their wire bytes (in --netstats-json)"
        )
    if any(cell in (NOT_APPLICABLE, UNKNOWN) or cell.endswith("+?") for cell in cells):
        tr.write_line(f"({LEGEND})")
