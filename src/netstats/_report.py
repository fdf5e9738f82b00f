"""A run's result (the connections of a program and its children) and its renderings.

The JSON form is the saved run that `netstats report` re-renders. Its schema, version 1:

    {"schema": "netstats.run/1", "program": ["script.py", "arg"], "pid": 123,
     "started": 1790000000.0, "finished": 1790000001.5, "exit_code": 0,
     "connections": [{...every Connection field, see netstats.FIELDS...}, ...]}

Fields may be added within a version; none is removed or changes meaning.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._format import address, short_frame, size

SCHEMA = "netstats.run/1"
GROUPS = ("host", "origin", "caller", "pid")
FORMATS = ("text", "json", "csv")


@dataclass
class Run:
    """What `netstats run` saw: the program, when, how it ended, and every connection."""

    program: list[str]
    pid: int
    started: float
    finished: float
    exit_code: int | None
    connections: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **self.__dict__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != SCHEMA:
            raise ValueError(f"not a netstats run file (schema {schema!r}, expected {SCHEMA!r})")
        return cls(
            program=list(data["program"]),
            pid=int(data["pid"]),
            started=float(data["started"]),
            finished=float(data["finished"]),
            exit_code=data.get("exit_code"),
            connections=list(data["connections"]),
        )


# ---- helpers shared by the renderers ----------------------------------------------------


def overhead(conn: dict[str, Any]) -> int | None:
    """TLS overhead: wire bytes minus application bytes (records, handshake), where known."""
    figures = (conn.get("wire_tx"), conn.get("wire_rx"), conn.get("tx"), conn.get("rx"))
    if not conn.get("tls") or None in figures:
        return None
    return int(conn["wire_tx"] + conn["wire_rx"] - conn["tx"] - conn["rx"])


def _sum(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def counted(values: Iterable[int | None]) -> str:
    """The size of a sum of application bytes: '+?' after it when some were not known."""
    values = list(values)
    total = size(sum(v for v in values if v is not None))
    return total + "+?" if None in values else total


def _order(conns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(conns, key=lambda c: (-((c["tx"] or 0) + (c["rx"] or 0)), c["id"]))


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


# ---- renderers --------------------------------------------------------------------------


def _summary(run: Run) -> str:
    conns = run.connections
    pids = {c["pid"] for c in conns} | {run.pid}
    parts = [
        f"netstats: {len(conns)} connection{'s' * (len(conns) != 1)}",
        f"tx {counted(c['tx'] for c in conns)}",
        f"rx {counted(c['rx'] for c in conns)}",
    ]
    wire_tx, wire_rx = _sum(c.get("wire_tx") for c in conns), _sum(c.get("wire_rx") for c in conns)
    if wire_tx is not None:
        parts.append(f"wire tx {size(wire_tx)} rx {size(wire_rx)}")
    parts.append(f"{run.finished - run.started:.2f}s")
    if len(pids) > 1:
        parts.append(f"{len(pids)} processes")
    if run.exit_code not in (0, None):
        parts.append(f"exit code {run.exit_code}")
    return ", ".join(parts)


def render_text(run: Run, by: str | None = None) -> str:
    lines = [_summary(run)]
    if not run.connections:
        return lines[0] + "\n"
    if by:
        return "\n".join(lines + [""] + _grouped(run, by)) + "\n"
    header = [
        "PID",
        "PROTO",
        "REMOTE",
        "HOST",
        "TX",
        "RX",
        "WIRE TX",
        "WIRE RX",
        "TLS+",
        "TIME",
        "CALLER",
        "ORIGIN",
    ]
    rows = []
    for c in _order(run.connections):
        proto = c["transport"] + (f"+{c['tls']}" if c.get("tls") else "")
        if c.get("source") == "kernel":
            proto += "+? (C)"  # found by the kernel census: TLS or not is not known
        if c.get("side") == "server":
            proto += " (in)"
        caller, origin = short_frame(c.get("caller")), short_frame(c.get("origin"))
        rows.append(
            [
                str(c["pid"]),
                proto,
                address(c.get("remote")),
                c.get("host") or "-",
                size(c["tx"]),
                size(c["rx"]),
                size(c.get("wire_tx")),
                size(c.get("wire_rx")),
                size(overhead(c)) if overhead(c) is not None else "-",
                f"{c['duration']:.3f}s",
                caller if not c.get("error") else f"{caller}  ! {c['error']}",
                "" if origin == caller else origin,
            ]
        )
    totals = [
        "",
        "total",
        f"{len(run.connections)} conn.",
        "",
        counted(c["tx"] for c in run.connections),
        counted(c["rx"] for c in run.connections),
        size(_sum(c.get("wire_tx") for c in run.connections)),
        size(_sum(c.get("wire_rx") for c in run.connections)),
        size(_sum(overhead(c) for c in run.connections)),
        "",
        "",
        "",
    ]
    return "\n".join(lines + [""] + _table(header, [*rows, totals], {0, 4, 5, 6, 7, 8, 9})) + "\n"


def _group_key(conn: dict[str, Any], by: str) -> str:
    if by == "host":
        return str(conn.get("host") or address(conn.get("remote")))
    if by in ("origin", "caller"):
        return short_frame(conn.get(by))
    return str(conn["pid"])


def groups(run: Run, by: str) -> list[dict[str, Any]]:
    """Rows of totals per host, origin, caller or pid, largest first."""
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)}")
    out: dict[str, dict[str, Any]] = {}
    for c in run.connections:
        key = _group_key(c, by)
        g = out.setdefault(
            key, {by: key, "connections": 0, "tx": 0, "rx": 0, "wire_tx": None, "wire_rx": None}
        )
        g["connections"] += 1
        for name in ("tx", "rx"):  # None once a connection's application bytes are not known
            g[name] = None if g[name] is None or c[name] is None else g[name] + c[name]
        for name in ("wire_tx", "wire_rx"):
            if c.get(name) is not None:
                g[name] = (g[name] or 0) + c[name]
    return sorted(out.values(), key=lambda g: (-((g["tx"] or 0) + (g["rx"] or 0)), g[by]))


def _grouped(run: Run, by: str) -> list[str]:
    header = [by.upper(), "CONNS", "TX", "RX", "WIRE TX", "WIRE RX"]
    rows = [
        [g[by], str(g["connections"]), size(g["tx"]), size(g["rx"]), size(g["wire_tx"]), size(g["wire_rx"])]
        for g in groups(run, by)
    ]
    return _table(header, rows, {1, 2, 3, 4, 5})


def render_json(run: Run, by: str | None = None) -> str:
    data = run.to_json()
    if by:
        data["groups"] = {"by": by, "rows": groups(run, by)}
    return json.dumps(data, indent=2) + "\n"


def render_csv(run: Run, by: str | None = None) -> str:
    buffer = io.StringIO()
    if by:
        rows = groups(run, by)
        writer = csv.DictWriter(buffer, fieldnames=[by, "connections", "tx", "rx", "wire_tx", "wire_rx"])
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    from ._record import FIELDS

    writer = csv.DictWriter(buffer, fieldnames=list(FIELDS), extrasaction="ignore")
    writer.writeheader()
    for c in _order(run.connections):
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in c.items()})
    return buffer.getvalue()


RENDERERS = {"text": render_text, "json": render_json, "csv": render_csv}


def render(run: Run, fmt: str = "text", by: str | None = None) -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](run, by)


def write(text: str, path: str | None, stream: Any = None) -> None:
    """To the file named, else to the stream (stderr by default: the program owns stdout)."""
    if path is None:
        stream = stream or sys.stderr
        stream.write(text)
        stream.flush()
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
