"""A run's result (the connections of a program and its children) and its renderings.

The JSON form is the saved run that `netstats report` re-renders. Its schema, version 1:

    {"schema": "netstats.run/1", "program": ["script.py", "arg"], "pid": 123,
     "started": 1790000000.0, "finished": 1790000001.5, "exit_code": 0,
     "accepts_left_out": 0,
     "connections": [{...every Connection field, see netstats.FIELDS...}, ...]}

`accepts_left_out`: connections the program accepted that are not in the report (it ran
without --servers). `processes`: each process of the run, {"pid", "parent", "ended"}, ended
being "exit" (through Python, its figures complete), "lost" (it died below Python: SIGKILL, a
signal's default action, C exit(), os._exit(); at most its journal's last interval is missing)
or "running" (still running as the report was made). A connection still open in a lost or
running process carries "unfinished": "process lost" / "process running" (its last figures).
Fields may be added within a version; none is removed or changes meaning.
A figure netstats could not know is null, and shown "?".
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._format import (
    LEGEND,
    NOT_APPLICABLE,
    UNKNOWN,
    address,
    clip,
    duration,
    peer,
    short_frame,
    size,
    size_total,
    total,
    visible,
)
from ._trace import render_trace

SCHEMA = "netstats.run/1"
GROUPS = ("host", "origin", "caller", "pid")
TAG = "tag:"  # --by tag:KEY: a row per value of the netstats.tag() label KEY
UNTAGGED = "(untagged)"  # the text report's name for the bytes moved without that label
FORMATS = ("text", "json", "csv", "trace")
SORTS = ("bytes", "tx", "rx", "wire", "time")
WIDTH = 120  # the default text layout fits this many columns
TOP = 20  # rows a text report shows unless told (--top N; 0: all): the busiest, then how many more
PHASES = ("dns_time", "connect_time", "tls_time", "ttfb")  # seconds; see Connection


class BadRun(ValueError):
    """A file that is not a run netstats can re-render; the message says what is wrong."""


@dataclass
class Run:
    """What `netstats run` saw: the program, when, how it ended, and every connection."""

    program: list[str]
    pid: int
    started: float
    finished: float
    exit_code: int | None
    connections: list[dict[str, Any]] = field(default_factory=list)
    accepts_left_out: int = 0
    processes: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **self.__dict__}

    @classmethod
    def from_json(cls, data: Any) -> Run:
        """A Run from a saved file's data; BadRun naming the first thing that is wrong."""
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != SCHEMA:
            raise BadRun(f"not a netstats run file (schema {_show(schema)}, expected {SCHEMA!r})")
        program = _need(data, "program", list)
        if not all(isinstance(a, str) for a in program):
            raise BadRun("'program' must be a list of strings")
        exit_code = data.get("exit_code")
        if exit_code is not None and not _is_int(exit_code):
            raise BadRun(f"'exit_code' must be an integer or null, not {_show(exit_code)}")
        accepts = data.get("accepts_left_out", 0)
        if not _is_int(accepts) or accepts < 0:
            raise BadRun(f"'accepts_left_out' must be an integer >= 0, not {_show(accepts)}")
        connections = _need(data, "connections", list)
        for i, conn in enumerate(connections):
            _check_connection(i, conn)
        processes = data.get("processes", [])
        if not isinstance(processes, list) or not all(_is_process(p) for p in processes):
            raise BadRun(
                '\'processes\' must be a list of {"pid": integer, "parent": integer or null, '
                '"ended": "exit", "lost" or "running"}'
            )
        started, finished = _need(data, "started", float), _need(data, "finished", float)
        for key, value in (("started", started), ("finished", finished)):
            if not _is_time(value):
                raise BadRun(f"{key!r} must be {_WHEN}, not {value}")
        if finished < started:
            raise BadRun(f"'finished' ({finished}) is before 'started' ({started})")
        return cls(
            program=list(program),
            pid=_need(data, "pid", int),
            started=started,
            finished=finished,
            exit_code=exit_code,
            connections=list(connections),
            accepts_left_out=accepts,
            processes=list(processes),
        )


ENDINGS = ("exit", "lost", "running")


def _is_process(p: Any) -> bool:
    return (
        isinstance(p, dict)
        and _is_int(p.get("pid"))
        and (p.get("parent") is None or _is_int(p["parent"]))
        and p.get("ended") in ENDINGS
    )


# ---- checking a saved run: every field the renderers read ---------------------------------

_MAX = 2**63  # byte counts and ids beyond this are not from a real run


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -_MAX < v < _MAX


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _is_time(v: Any) -> bool:
    return _is_number(v) and 0 <= v < _LATEST


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


_KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {
    int: (_is_int, "an integer"),
    float: (_is_number, "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    list: (lambda v: isinstance(v, list), "a list"),
}


def _need(data: dict[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise BadRun(f"{key!r} is missing")
    check, what = _KINDS[kind]
    if not check(data[key]):
        raise BadRun(f"{key!r} must be {what}, not {_show(data[key])}")
    return float(data[key]) if kind is float else data[key]


# Connection fields the renderers read, and what each may hold besides null.
_COUNTS = ("rx", "tx", "wire_rx", "wire_tx", "retransmits", "retrans_bytes", "reads", "writes")
_CLOCKS = ("opened", "connected", "closed", "tls_started", "first_write")  # times on the clock
_SPANS = ("rtt", "min_rtt", "duration", *PHASES)  # lengths of time
# Seconds since 1970 before this (the year 2286), lengths shorter: a time beyond is not from a
# real run, and would overflow a sum, a JavaScript date or the page's axis.
_LATEST = 1e10
_WHEN = f"a time in seconds since 1970 (0 to {_LATEST:.0e})"
_TEXTS = ("side", "host", "tls", "origin", "caller", "error", "source", "unfinished")


def _check_connection(i: int, conn: Any) -> None:
    if not isinstance(conn, dict):
        raise BadRun(f"connection {i} must be an object, not {_show(conn)}")
    for key in ("id", "pid", "transport"):
        if key not in conn:
            raise BadRun(f"connection {i}: {key!r} is missing")
    for key in ("id", "pid"):
        if not _is_int(conn[key]):
            raise BadRun(f"connection {i}: {key!r} must be an integer, not {_show(conn[key])}")
    if not isinstance(conn["transport"], str):
        raise BadRun(f"connection {i}: 'transport' must be a string, not {_show(conn['transport'])}")
    for keys, ok, what in (
        (_COUNTS, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        (_CLOCKS, _is_time, _WHEN),
        (_SPANS, _is_time, f"a number of seconds (0 to {_LATEST:.0e})"),
        (_TEXTS, lambda v: isinstance(v, str), "a string"),
    ):
        for key in keys:
            value = conn.get(key)
            if value is not None and not ok(value):
                raise BadRun(f"connection {i}: {key!r} must be {what} or null, not {_show(value)}")
    for key in ("local", "remote"):
        value = conn.get(key)
        if value is not None and not (isinstance(value, str) or _is_address(value)):
            raise BadRun(f"connection {i}: {key!r} must be [address, port, ...], a path or null")
    closed = conn.get("closed")
    # Each time is before the close (not `opened` after `connected`: reset(full=True) restarts it).
    for key in ("opened", "connected", "tls_started", "first_write"):
        value = conn.get(key)
        if value is not None and closed is not None and value > closed:
            raise BadRun(f"connection {i}: {key!r} ({value}) is after 'closed' ({closed})")
    resumed = conn.get("tls_resumed")
    if resumed is not None and not isinstance(resumed, bool):
        raise BadRun(f"connection {i}: 'tls_resumed' must be true, false or null, not {_show(resumed)}")
    marks = conn.get("marks")
    if marks is not None and not isinstance(marks, list):
        raise BadRun(f"connection {i}: 'marks' must be a list or null, not {_show(marks)}")
    if conn.get("tags") is not None and not isinstance(conn["tags"], list):
        raise BadRun(f"connection {i}: 'tags' must be a list or null, not {_show(conn['tags'])}")
    exchanges = conn.get("exchanges")
    if exchanges is not None and not (
        isinstance(exchanges, list)
        and all(
            isinstance(e, list)
            and len(e) == 3
            and _is_time(e[0])
            and all(v is None or _is_time(v) for v in e[1:])
            for e in exchanges
        )
    ):
        raise BadRun(
            f"connection {i}: 'exchanges' must be a list of [sent, first_byte, last_byte] times or null"
        )
    late = [v for e in exchanges or () for v in e if v is not None and closed is not None and v > closed]
    if late:
        raise BadRun(f"connection {i}: 'exchanges' has a time ({late[0]}) after 'closed' ({closed})")
    for entry in conn.get("tags") or ():
        if not _is_tag_entry(entry):
            raise BadRun(
                f"connection {i}: each of 'tags' must be "
                f'{{"labels": {{name: text}}, "rx": integer >= 0, "tx": integer >= 0}}, not {_show(entry)}'
            )


def _is_tag_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("labels"), dict):
        return False
    labels = entry["labels"]
    return all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()) and all(
        _is_int(entry.get(n)) and entry[n] >= 0 for n in ("rx", "tx")
    )


def _is_address(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 2 and isinstance(value[0], str) and _is_int(value[1])


# ---- helpers shared by the renderers ----------------------------------------------------


def overhead(conn: dict[str, Any]) -> int | None:
    """TLS overhead: wire bytes minus application bytes (records, handshake), where known.

    None for a plain connection (not applicable: `conn["tls"]` is None) and for a TLS one where
    a figure is unknown."""
    wire, plain = _both(conn, "wire_tx", "wire_rx"), _both(conn, "tx", "rx")
    if not conn.get("tls") or wire is None or plain is None:
        return None
    return int(wire - plain)


def _both(conn: dict[str, Any], a: str, b: str) -> int | None:
    x: int | None = conn.get(a)
    y: int | None = conn.get(b)
    return None if x is None or y is None else x + y


def _or_wire(c: dict[str, Any], *names: str) -> float | None:
    """The application's bytes named, or where netstats cannot know them (a connection the
    census found: C code's) the wire's, which are what is known of its size."""
    plain: list[int | None] = [c.get(n) for n in names]
    if all(v is not None for v in plain):
        return float(sum(v or 0 for v in plain))
    wire: list[int | None] = [c.get(f"wire_{n}") for n in names]
    if c.get("source") != "kernel" or any(v is None for v in wire):
        return None
    return float(sum(v or 0 for v in wire))


_SORT_KEYS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "bytes": lambda c: _or_wire(c, "tx", "rx"),
    "tx": lambda c: _or_wire(c, "tx"),
    "rx": lambda c: _or_wire(c, "rx"),
    "wire": lambda c: _both(c, "wire_tx", "wire_rx"),
    "time": lambda c: c.get("duration"),
    "busy": lambda g: g.get("busy"),  # (a group's time: see busy())
}


def order(conns: list[dict[str, Any]], sort: str = "bytes") -> list[dict[str, Any]]:
    """Largest first by `sort` (bytes: tx + rx; for a connection whose application bytes are
    not known, its wire bytes); unknown figures last, then by id."""
    key = _SORT_KEYS[sort]

    def rank(c: dict[str, Any]) -> tuple[int, float, int]:
        v = key(c)
        return (1, 0.0, c["id"]) if v is None else (0, -v, c["id"])

    return sorted(conns, key=rank)


def _maybe_tls(conn: dict[str, Any]) -> bool:
    """TLS, or not known to be plain: a connection the kernel census found (made by C code)."""
    return bool(conn.get("tls")) or conn.get("source") == "kernel"


def _tls_plus(conns: list[dict[str, Any]]) -> str:
    """Summed TLS overhead of the TLS connections among conns ("+?" with one whose TLS is not
    known); "-" when none is or may be TLS."""
    return size_total(overhead(c) for c in conns if _maybe_tls(c))


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Aligned columns two spaces apart, those in `right` aligned right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _fit(rows: list[list[str]], header: list[str], flexible: list[int], width: int) -> None:
    """Shorten the cells of the flexible columns (in place) so that every line fits `width`."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fixed = sum(w for i, w in enumerate(widths) if i not in flexible) + 2 * (len(header) - 1)
    room = width - fixed
    natural = [widths[i] for i in flexible]
    if sum(natural) <= room:
        return
    # Share the room out: a column that needs less than an equal share gives the rest away.
    share: dict[int, int] = {}
    left, pending = max(room, 8 * len(flexible)), sorted(flexible, key=lambda i: widths[i])
    while pending:
        i = pending.pop(0)
        share[i] = min(widths[i], left // (len(pending) + 1))
        left -= share[i]
    for row in [header, *rows]:
        for i in flexible:
            row[i] = clip(row[i], share[i])


def _legend(rows: list[list[str]]) -> list[str]:
    """The meaning of "?" and "-", under a table that shows either."""
    marked = any(cell in (UNKNOWN, NOT_APPLICABLE) or cell.endswith("+?") for row in rows for cell in row)
    return [f"({LEGEND})"] if marked else []


# ---- renderers --------------------------------------------------------------------------


def _summary(run: Run) -> list[str]:
    conns = run.connections
    pids = {c["pid"] for c in conns} | {p["pid"] for p in run.processes} | {run.pid}
    parts = [
        f"netstats: {len(conns)} connection{'s' * (len(conns) != 1)}",
        f"tx {size_total((c.get('tx') for c in conns), size(0))}",
        f"rx {size_total((c.get('rx') for c in conns), size(0))}",
    ]
    wire = [(c.get("wire_tx"), c.get("wire_rx")) for c in conns if _has(c, "wire_tx")]
    if any(w != (None, None) for w in wire):
        parts.append(f"wire tx {size_total(w[0] for w in wire)} rx {size_total(w[1] for w in wire)}")
    parts.append(duration(run.finished - run.started))
    if len(pids) > 1:
        parts.append(f"{len(pids)} processes")
    if run.exit_code not in (0, None):
        parts.append(f"exit code {run.exit_code}")
    lines = [", ".join(parts)]
    lines += _endings(run)
    # C code that no driver adapter tells netstats of (src/netstats/_sources/drivers.py) is seen
    # only by the census's sweeps: that it made these says its short connections may be missing.
    unknown_c = sum(1 for c in conns if c.get("source") == "kernel" and not c.get("origin"))
    if unknown_c:
        lines.append(
            f"netstats: {unknown_c} connection{'s' * (unknown_c != 1)} made by C code netstats has no "
            "adapter for, found by the kernel census: such code's connections shorter than 0.3 s may "
            "be missing"
        )
    if run.accepts_left_out:
        n = run.accepts_left_out
        lines.append(
            f"netstats: the program accepted {n} connection{'s' * (n != 1)}, left out of this report "
            "(netstats run --servers reports them)"
        )
    return lines


def _endings(run: Run) -> list[str]:
    """What the report cannot be sure of: processes that died below Python, or still ran."""
    lines = []
    for how, said in (
        (
            "lost",
            "ended without a word (killed, or exited below Python): their open connections "
            "show their last figures, up to a second old",
        ),
        (
            "running",
            "were still running when this report was made: their open connections show their last figures",
        ),
    ):
        pids = [str(p["pid"]) for p in run.processes if p.get("ended") == how]
        if pids:
            n = len(pids)
            lines.append(f"netstats: {n} process{'es' * (n != 1)} (pid {', '.join(pids)}) {said}")
    return lines


def render_text(
    run: Run, by: str | None = None, *, top: int | None = None, sort: str = "bytes", wide: bool = False
) -> str:
    """The text report: a summary line, then a row per connection (or per group), largest first,
    and a total line. Fits 120 columns (places in the code shortened); `wide` shows every column
    (the remote address, wire bytes, origin) in full; `top`: the first rows only (None: the
    first TOP, then a line saying how many more; 0: all)."""
    lines = _summary(run)
    if not run.connections:
        return "\n".join(lines) + "\n"
    table = _grouped(run, by, top, sort, wide) if by else _connections(run, top, sort, wide)
    return "\n".join([*lines, "", *table]) + "\n"


@dataclass(frozen=True)
class _Column:
    """A column of the per-connection table: its cell for a connection and on the total line."""

    name: str
    cell: Callable[[dict[str, Any]], str]
    total: Callable[[list[dict[str, Any]]], str] = lambda conns: ""
    right: bool = False  # aligned right (figures)
    wide: bool = False  # shown with --wide only


def _proto(c: dict[str, Any]) -> str:
    tls = f"+{c['tls']}" if c.get("tls") else ""
    if c.get("source") == "kernel":  # made by C code: TLS or not is not known, unless its driver said
        tls = f"+{c['tls']} (C)" if c.get("tls") else "+? (C)"
    return f"{c['transport']}{tls}{' (in)' if c.get('side') == 'server' else ''}"


def _caller(c: dict[str, Any]) -> str:
    caller = short_frame(c.get("caller"))
    return f"{caller} ! {c['error']}" if c.get("error") else caller


def _has(c: dict[str, Any], name: str) -> bool:
    """Whether a connection has such a figure at all: wire bytes are a TCP stream's."""
    return c["transport"] == "tcp" or not name.startswith("wire_")


def _figure(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda c: size(c.get(name)) if _has(c, name) else NOT_APPLICABLE


def _summed(name: str) -> Callable[[list[dict[str, Any]]], str]:
    return lambda conns: size_total(c.get(name) for c in conns if _has(c, name))


_PHASE_TITLES = ("DNS", "CONNECT", "TLS", "TTFB")


def _not_applicable(name: str, c: dict[str, Any]) -> bool:
    """Whether a phase cannot exist for this connection (shown "-", never "?"): TLS on a plain
    connection, DNS for a literal address, a connect or a first byte for UDP (no handshake, no
    request), or either on an attempt that never connected (refused, unreachable)."""
    if name == "tls_time":
        return not c.get("tls")
    if name == "dns_time":
        return not c.get("host")
    if name in ("connect_time", "ttfb"):
        return c.get("transport") == "udp" or (c.get("connected") is None and bool(c.get("error")))
    return False


def _phase(name: str) -> Callable[[dict[str, Any]], str]:
    """A phase's cell: the time, "-" where it cannot exist (_not_applicable), else "?"."""

    def cell(c: dict[str, Any]) -> str:
        value = c.get(name)
        if value is None and _not_applicable(name, c):
            return NOT_APPLICABLE
        return duration(value)

    return cell


COLUMNS = (
    _Column("PID", lambda c: str(c["pid"]), right=True),
    _Column("PROTO", _proto, lambda conns: "total"),
    _Column("PEER", lambda c: peer(c.get("host"), c.get("remote")), lambda conns: f"{len(conns)} conn."),
    _Column("REMOTE", lambda c: address(c.get("remote")), wide=True),
    _Column("TX", _figure("tx"), _summed("tx"), right=True),
    _Column("RX", _figure("rx"), _summed("rx"), right=True),
    _Column("WIRE TX", _figure("wire_tx"), _summed("wire_tx"), right=True, wide=True),
    _Column("WIRE RX", _figure("wire_rx"), _summed("wire_rx"), right=True, wide=True),
    _Column("TLS+", lambda c: size(overhead(c)) if _maybe_tls(c) else NOT_APPLICABLE, _tls_plus, right=True),
    _Column("TIME", lambda c: duration(c.get("duration")), right=True),
    *(
        _Column(title, _phase(name), right=True, wide=True)
        for title, name in zip(_PHASE_TITLES, PHASES, strict=True)
    ),
    _Column("CALLER", _caller),
    _Column("ORIGIN", lambda c: short_frame(c.get("origin")), wide=True),  # usually a library
)


def _more(hidden: int, what: str, top: int | None) -> str:
    told = f"--top {top}: " if top else ""
    return f"... {hidden} more {what}{'s' * (hidden != 1)} ({told}--top 0 shows all)"


def _connections(run: Run, top: int | None, sort: str, wide: bool) -> list[str]:
    conns = order(run.connections, sort)
    shown = conns[: TOP if top is None else top or None]
    columns = [col for col in COLUMNS if wide or not col.wide]
    header = [col.name for col in columns]
    rows = [[visible(col.cell(c)) for col in columns] for c in shown]  # (names: never raw)
    totals = [col.total(run.connections) for col in columns]
    if not wide:
        _fit([*rows, totals], header, [header.index("PEER"), header.index("CALLER")], WIDTH)
    lines = _table(header, [*rows, totals], {i for i, col in enumerate(columns) if col.right})
    if len(shown) < len(conns):
        lines.insert(-1, _more(len(conns) - len(shown), "connection", top))
    return lines + _legend([*rows, totals])


def _group_key(conn: dict[str, Any], by: str) -> str:
    if by == "host" and conn.get("side") == "server":
        # Accepted connections come from ephemeral ports: they group by the address accepting them.
        return f"{address(conn.get('local'))} (in)"
    if by == "host":
        return peer(conn.get("host"), conn.get("remote"))
    if by in ("origin", "caller"):
        return short_frame(conn.get(by))
    return str(conn["pid"])


_SUMMED = ("tx", "rx", "wire_tx", "wire_rx", "duration")


def busy(conns: list[dict[str, Any]], end: float) -> float | None:
    """Seconds during which at least one of conns was open (a connection still open at the
    report counts to `end`): a group's time, which a sum of durations overstates when its
    connections overlap. None if none of them says when it opened."""
    spans: list[tuple[float, float]] = sorted(
        (float(c["opened"]), float(c["closed"]) if _is_time(c.get("closed")) else end)
        for c in conns
        if _is_time(c.get("opened"))
    )
    if not spans:
        return None
    seconds, (start, stop) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > stop:
            seconds += stop - start
            start, stop = a, b
        else:
            stop = max(stop, b)
    return seconds + max(0.0, stop - start)


def groups(run: Run, by: str, sort: str = "bytes") -> list[dict[str, Any]]:
    """Rows of totals per host (host:port; "address:port (in)" for accepted connections, by the
    address that accepted them), origin, caller or pid, largest first.

    Each summed figure is the sum of its known parts; `incomplete` names the figures with an
    unknown part. A figure is None when no part is known (it is then in `incomplete`) or when
    there is nothing to add up: wire bytes of a group with no TCP connection, `tls_overhead`
    (over the group's TLS connections) of one with no TLS connection. `duration` is the sum of
    the connections' durations; `busy` the seconds during which one of them at least was open
    (the text report's TIME: see busy()).

    `by` "tag:KEY": see `tag_groups`."""
    if by.startswith(TAG):
        return tag_groups(run, by, sort)
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)} or tag:KEY")
    members: dict[str, list[dict[str, Any]]] = {}
    for c in run.connections:
        members.setdefault(_group_key(c, by), []).append(c)
    out = []
    for key, conns in members.items():
        g: dict[str, Any] = {by: key, "connections": len(conns)}
        incomplete = []
        for name in _SUMMED:
            g[name], unknown = total(c.get(name) for c in conns if _has(c, name))
            if unknown:
                incomplete.append(name)
        tls = [overhead(c) for c in conns if _maybe_tls(c)]
        g["tls_overhead"], unknown = total(tls)
        if unknown:
            incomplete.append("tls_overhead")
        g["busy"] = busy(conns, run.finished)
        g["incomplete"] = incomplete
        out.append(g)
    by_size = _SORT_KEYS["busy" if sort == "time" else sort]
    return sorted(out, key=lambda g: (by_size(g) is None, -(by_size(g) or 0), g[by]))


def tag_groups(run: Run, by: str, sort: str = "bytes") -> list[dict[str, Any]]:
    """Rows per value of the netstats.tag() label named after "tag:" (`connections`: how many
    carried bytes of it), and a row under None for the bytes moved without that label (each
    connection's rx/tx less its tags). Wire bytes, TLS overhead and time are not split by tag:
    None. A figure of the None row with an unknown part (a connection whose application bytes
    are not known, or reset since it opened) is None, named in `incomplete`; every row's are
    None when a connection's bytes cannot be split by tag ("tags": null)."""
    key = by[len(TAG) :]
    if not key:
        raise ValueError("--by tag: needs a label name, e.g. tag:route")
    rows: dict[str | None, dict[str, Any]] = {}

    def row(value: str | None) -> dict[str, Any]:
        if value not in rows:
            rows[value] = {by: value, "connections": 0, "tx": 0, "rx": 0, "incomplete": []}
            rows[value].update(dict.fromkeys(("wire_tx", "wire_rx", "duration", "busy", "tls_overhead")))
        return rows[value]

    unsplit = False  # a connection whose bytes cannot be split by tag ("tags": null)
    for c in run.connections:
        rest: dict[str, int | None] = {"rx": c.get("rx"), "tx": c.get("tx")}
        if "tags" in c and c["tags"] is None:
            unsplit = True
        for value in dict.fromkeys(e["labels"][key] for e in c.get("tags") or () if key in e["labels"]):
            row(value)["connections"] += 1
        for entry in c.get("tags") or ():
            value = entry["labels"].get(key)
            if value is None:
                continue
            for name in ("rx", "tx"):
                row(value)[name] += entry[name]
                left = rest[name]
                rest[name] = None if left is None or left < entry[name] else left - entry[name]
        if rest["rx"] != 0 or rest["tx"] != 0:
            untagged = row(None)
            untagged["connections"] += 1
            for name in ("rx", "tx"):
                part = rest[name]
                if part is None:
                    untagged["incomplete"].append(name)
                else:
                    untagged[name] += part
    for untagged in rows.values():
        if unsplit:
            untagged["incomplete"].extend(("rx", "tx"))
        for name in sorted(set(untagged["incomplete"])):
            untagged[name] = None
        untagged["incomplete"] = sorted(set(untagged["incomplete"]))
    by_size = _SORT_KEYS[sort]
    return sorted(rows.values(), key=lambda g: (by_size(g) is None, -(by_size(g) or 0), g[by] or ""))


def _grouped(run: Run, by: str, top: int | None, sort: str, wide: bool) -> list[str]:
    rows_data = groups(run, by, sort)
    shown = rows_data[: TOP if top is None else top or None]
    header = [visible(by.upper()), "CONNS", "TX", "RX", "WIRE TX", "WIRE RX", "TLS+", "TIME"]

    def figure(g: dict[str, Any], name: str, fmt: Callable[[Any], str]) -> str:
        if g[name] is None:
            # nothing to add up (no TCP, no TLS connection in the group), or an unknown part
            return UNKNOWN if name in g["incomplete"] else NOT_APPLICABLE
        return fmt(g[name]) + ("+?" if name in g["incomplete"] else "")

    rows = [
        [
            visible(g[by]) if g[by] is not None else UNTAGGED,
            str(g["connections"]),
            *(figure(g, name, size) for name in ("tx", "rx", "wire_tx", "wire_rx", "tls_overhead")),
            figure(g, "busy", duration),
        ]
        for g in shown
    ]
    conns = run.connections
    totals = [
        "total",
        str(len(conns)),
        *(_summed(name)(conns) for name in ("tx", "rx", "wire_tx", "wire_rx")),
        _tls_plus(conns),
        duration(busy(conns, run.finished)),
    ]
    if not wide:
        _fit([*rows, totals], header, [0], WIDTH)
    lines = _table(header, [*rows, totals], set(range(1, len(header))))
    if len(shown) < len(rows_data):
        lines.insert(-1, _more(len(rows_data) - len(shown), "group", top))
    return lines + _legend([*rows, totals]) + _group_notes(run, by, rows_data)


def _group_notes(run: Run, by: str, rows: list[dict[str, Any]]) -> list[str]:
    """What a grouped table cannot say by itself: a tag label no connection carries (every byte
    is then untagged), and connections counted in more than one row."""
    notes = []
    if by.startswith(TAG):
        key = by[len(TAG) :]
        if not any(key in (t.get("labels") or {}) for c in run.connections for t in c.get("tags") or ()):
            notes.append(
                f"(no connection moved bytes under the tag label {visible(key)!r}: all are untagged)"
            )
    if sum(g["connections"] for g in rows) > len(run.connections):
        notes.append(
            "(CONNS add up to more than the total: a connection under several values counts in each)"
        )
    return notes


def render_json(run: Run, by: str | None = None, *, sort: str = "bytes", **_: Any) -> str:
    data = run.to_json()
    if by:
        data["groups"] = {"by": by, "rows": groups(run, by, sort)}
    return json.dumps(data, indent=2) + "\n"


def render_csv(run: Run, by: str | None = None, *, sort: str = "bytes", **_: Any) -> str:
    """CSV: a row per connection (addresses as host:port, [v6]:port; marks as JSON), or per group.
    An unknown figure is an empty cell. Text cells are names: see `_csv_cell`."""
    buffer = io.StringIO()
    if by:
        names = [by, "connections", *_SUMMED, "busy", "tls_overhead", "incomplete"]
        writer = csv.DictWriter(buffer, fieldnames=names)
        writer.writeheader()
        for g in groups(run, by, sort):
            row = {**g, "incomplete": " ".join(g["incomplete"])}
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        return buffer.getvalue()
    from ._record import FIELDS

    writer = csv.DictWriter(buffer, fieldnames=list(FIELDS), extrasaction="ignore")
    writer.writeheader()
    for c in order(run.connections, sort):
        row = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in c.items()}
        for key in ("local", "remote"):
            if c.get(key):
                row[key] = address(c[key])
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return buffer.getvalue()


_FORMULA = ("=", "+", "-", "@")  # what a spreadsheet reads as the start of a formula (OWASP)


def _csv_cell(value: Any) -> Any:
    """A CSV cell: numbers as they are; text through `visible` (no control character: OWASP's tab
    and CR starts are escaped there) and, if a spreadsheet would run it as a formula ("=1+2",
    "@SUM(A1)"), with a ' before it. A lone "-" (not applicable) is no formula."""
    if not isinstance(value, str):
        return value
    text = visible(value)
    return "'" + text if text.startswith(_FORMULA) and text != NOT_APPLICABLE else text


RENDERERS: dict[str, Callable[..., str]] = {
    "text": render_text,
    "json": render_json,
    "csv": render_csv,
    "trace": render_trace,
}


def render(
    run: Run,
    fmt: str = "text",
    by: str | None = None,
    *,
    top: int | None = None,
    sort: str = "bytes",
    wide: bool = False,
) -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if sort not in SORTS:
        raise ValueError(f"cannot sort by {sort!r}; choose one of {', '.join(SORTS)}")
    if fmt == "text":
        return render_text(run, by, top=top, sort=sort, wide=wide)
    return RENDERERS[fmt](run, by, sort=sort)


def unwritable(path: str | os.PathLike[str]) -> str | None:
    """Why a report could not be written to path, or None: checked before a run, so that a wrong
    path costs no run."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return "is a directory"
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        return f"no such directory {folder!r}"
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        return "permission denied"
    return None


def write(text: str, path: str | None, stream: Any = None) -> None:
    """To the file named, else to the stream (stderr by default: the program owns stdout).

    A file is replaced whole or not at all: the text goes to a new file beside it, renamed
    over it once complete (a reader never sees half a report, a failed write leaves the old
    one). OSError if it cannot be written."""
    if path is None:
        stream = stream or sys.stderr
        # What the stream cannot encode (a name on an ASCII terminal) goes as an escape, never
        # as UnicodeEncodeError (names are visible() already: this is for printable ones).
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        stream.flush()
        return
    path = os.path.abspath(path)
    data = text.encode("utf-8", "backslashreplace")  # (a name that is not text stays readable)
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:  # /dev/stdout, a pipe: written in place (a rename would replace the node itself)
        with open(path, "wb") as f:
            f.write(data)
        return
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        while data:
            data = data[os.write(fd, data) :]
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _say(line: str) -> None:
    """One line on stderr about netstats' own files (none if stderr is gone)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def deliver(run: Run, options: dict[str, Any], who: str = "netstats run", stream: Any = None) -> None:
    """Render a run as `options` say ("format", "by", "top", "sort", "wide": see render) and
    write it to options["output"] (stderr if None, stdout if "-"), and the timeline to options["html"] if
    given (`stream`, stderr by default, when there is no "output"). A write that fails costs one
    line naming the path and the reason, and the report goes to stderr instead: never an
    exception (the program's exit code stands)."""
    text = render(
        run, options.get("format", "text"), options.get("by"), top=options.get("top"),
        sort=options.get("sort", "bytes"), wide=bool(options.get("wide")),
    )  # fmt: skip
    output = options.get("output")
    try:
        if output == "-":
            write(text, None, sys.stdout)
        else:
            write(text, output, stream)
        if output not in (None, "-"):
            _say(f"netstats: wrote the report to {visible(str(output))}")
    except OSError as exc:
        try:
            print(f"{who}: cannot write {output}: {exc.strerror or exc}; the report follows", file=sys.stderr)
            write(text, None)
        except (OSError, ValueError):  # no stderr either: nowhere left to say it
            pass
    html = options.get("html")
    if html:
        from ._html import render_html

        try:
            write(render_html(run), html)
            _say(f"netstats: wrote the timeline to {visible(str(html))}")
        except OSError as exc:
            print(f"{who}: cannot write {html}: {exc.strerror or exc}", file=sys.stderr)
