"""A run as a timeline: each connection's phases on the clock, and Chrome's trace-event JSON.

`segments()` places the phases a connection recorded (dns_time, connect_time, tls_time, ttfb,
and its request/response `exchanges` where netstats saw them) where they happened; the HTML
timeline (_html.py) and `--format trace` both draw from it. A phase netstats did not observe
has no segment: nothing is drawn where nothing is known.

The trace opens in Perfetto or chrome://tracing: one track (`tid`) per connection, named by a
metadata event, its phases as complete ("X") events in microseconds from the run's start, its
`netstats.mark()` marks as instant ("i") events, its tags in the args of its slices.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ._format import peer, visible

# Phase names, in the order they happen; "open" is the span of a connection with no finer phase
# known there (a server's side, a connection that never wrote, the time between exchanges).
PHASES = ("dns", "connect", "tls", "waiting", "transfer", "open")


def _micro(seconds: float) -> int:
    """Whole microseconds: integers add up exactly, so one phase ends where the next begins."""
    return round(seconds * 1e6)


def _number(value: Any) -> float | None:
    """A finite number as a float, else None (a saved run is data: it may hold anything)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def exchanges(c: dict[str, Any]) -> list[tuple[float, float | None, float | None]]:
    """The record's `exchanges` as (sent, first_byte, last_byte) in wall-clock seconds, in the
    order sent (segments() keeps them inside the connection's life); an entry that is not one
    is left out. [] where it has none (a run saved before netstats recorded them)."""
    out = []
    for entry in c.get("exchanges") or ():
        sent = _number(entry[0]) if isinstance(entry, (list, tuple)) and len(entry) >= 3 else None
        if sent is not None:
            out.append((sent, _number(entry[1]), _number(entry[2])))
    return sorted(out, key=lambda e: e[0])


def segments(c: dict[str, Any], end: float) -> list[tuple[str, float, float]]:
    """(phase, start, stop) in wall-clock seconds for one connection (as_dict() form); `end`
    stands in for `closed` while the connection is open. Each segment begins where the one
    before it ended or later (the phases of a track never partly overlap); DNS ends at open."""
    opened = _number(c.get("opened"))
    if opened is None:
        return []
    closed = _number(c.get("closed"))
    closed = end if closed is None else closed
    out: list[tuple[str, float, float]] = []
    dns, connect, tls, ttfb = (_number(c.get(k)) for k in ("dns_time", "connect_time", "tls_time", "ttfb"))
    if dns is not None:
        out.append(("dns", opened - dns, opened))
    cursor = opened

    def add(phase: str, begin: float, stop: float) -> None:
        nonlocal cursor
        begin = min(max(begin, cursor), closed)
        stop = min(max(stop, begin), closed)
        if phase == "open" and stop <= begin:
            return
        out.append((phase, begin, stop))
        cursor = stop

    if connect is not None:
        add("connect", opened, opened + connect)
    tls_started = _number(c.get("tls_started"))
    if tls is not None and tls_started is not None:
        add("open", cursor, tls_started)
        add("tls", tls_started, tls_started + tls)
    calls = exchanges(c)
    first_write = _number(c.get("first_write"))
    if calls:
        # Each exchange its own waiting (request sent to first byte back) and transfer (to the
        # last byte before the next request); one not answered leaves its time "open".
        for i, (sent, first, last) in enumerate(calls):
            following = calls[i + 1][0] if i + 1 < len(calls) else closed
            add("open", cursor, sent)
            if first is None:
                continue
            add("waiting", sent, first)
            add("transfer", first, following if last is None else last)
    elif ttfb is not None and first_write is not None:
        add("open", cursor, first_write)
        add("waiting", first_write, first_write + ttfb)
        add("transfer", cursor, closed)
    add("open", cursor, closed)
    return out


def marks(c: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's marks as plain data, each {"name", "time", "rx", "tx", "elapsed"}, with a
    time only where it falls in the connection's life (else None: not placed on the clock)."""
    opened, closed = _number(c.get("opened")), _number(c.get("closed"))
    out = []
    for m in c.get("marks") or ():
        if not isinstance(m, dict):
            continue
        when = _number(m.get("time"))
        if when is not None and (opened is None or when < opened or (closed is not None and when > closed)):
            when = None
        name = m.get("name")
        out.append(
            {
                "name": visible(name) if isinstance(name, str) else "",
                "time": when,
                **{k: m.get(k) if isinstance(m.get(k), int) else None for k in ("rx", "tx")},
                "elapsed": _number(m.get("elapsed")),
            }
        )
    return out


def label(c: dict[str, Any]) -> str:
    """A connection as every timeline names it: the peer as the text report's PEER column."""
    return visible(peer(c.get("host"), c.get("remote")))


_FIGURES = (
    "rx",
    "tx",
    "wire_rx",
    "wire_tx",
    "tls",
    "source",
    "side",
    "rtt",
    "min_rtt",
    "retransmits",
    "retrans_bytes",
    "reads",
    "writes",
    "error",
    "unfinished",
    "caller",
    "origin",
    "tags",
)


def render_trace(run: Any, by: str | None = None, **_: Any) -> str:
    """Chrome trace-event JSON for a Run (`by` is not used: every connection has its own track)."""
    start = run.started
    events: list[dict[str, Any]] = []
    named: set[int] = set()
    for c in run.connections:
        pid = c["pid"]
        if pid not in named:
            named.add(pid)
            title = visible(" ".join(run.program)) if pid == run.pid else f"child {pid}"
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": title}})
        tid = c["id"]
        name = f"#{c['id']} {visible(c['transport'])} {label(c)}"
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
        events.append(
            {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}}
        )
        figures = {k: visible(v) if isinstance(v, str) else v for k, v in ((k, c.get(k)) for k in _FIGURES)}
        figures["peer"] = label(c)
        figures["tags"] = [
            {**t, "labels": {visible(k): visible(v) for k, v in t["labels"].items()}}
            for t in c.get("tags") or ()
        ]
        # Both ends rounded, the length their difference: a phase ends exactly where the next
        # begins (rounded apart, they overlapped by a nanosecond now and then, and Perfetto
        # rejects partly overlapping slices).
        for phase, begin, stop in segments(c, run.finished):
            ts = _micro(begin - start)
            slice_ = {"ph": "X", "name": phase, "cat": "netstats", "pid": pid, "tid": tid}
            events.append({**slice_, "ts": ts, "dur": max(0, _micro(stop - start) - ts), "args": figures})
        for m in marks(c):
            if m["time"] is not None:
                args = {k: m[k] for k in ("rx", "tx", "elapsed")}
                instant = {"ph": "i", "s": "t", "name": m["name"] or "mark", "cat": "netstats.mark"}
                events.append(
                    {**instant, "pid": pid, "tid": tid, "ts": _micro(m["time"] - start), "args": args}
                )
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}) + "\n"
