"""A run as a timeline: each connection's phases on the clock, and Chrome's trace-event JSON.

`segments()` places the phases a connection recorded (dns_time, connect_time, tls_time, ttfb)
where they happened; the HTML timeline (_html.py) and `--format trace` both draw from it. A
phase netstats did not observe has no segment: nothing is drawn where nothing is known.

The trace opens in Perfetto or chrome://tracing: one track (`tid`) per connection, named by a
metadata event, its phases as complete ("X") events in microseconds from the run's start.
"""

from __future__ import annotations

import json
from typing import Any

# Phase names, in the order they happen; "open" is the span of a connection with no finer phase
# known there (a server's side, a connection that never wrote, the time after the last byte).
PHASES = ("dns", "connect", "tls", "waiting", "transfer", "open")


def _micro(seconds: float) -> int:
    """Whole microseconds: integers add up exactly, so one phase ends where the next begins."""
    return round(seconds * 1e6)


def segments(c: dict[str, Any], end: float) -> list[tuple[str, float, float]]:
    """(phase, start, stop) in wall-clock seconds for one connection (as_dict() form); `end`
    stands in for `closed` while the connection is open."""
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
    if connect is not None:
        out.append(("connect", opened, opened + connect))
        cursor = opened + connect
    tls_started = _number(c.get("tls_started"))
    if tls is not None and tls_started is not None:
        out.append(("tls", tls_started, tls_started + tls))
        cursor = max(cursor, tls_started + tls)
    first_write = _number(c.get("first_write"))
    if ttfb is not None and first_write is not None:
        if first_write > cursor:
            out.append(("open", cursor, first_write))
        out.append(("waiting", first_write, first_write + ttfb))
        cursor = first_write + ttfb
        if closed > cursor:
            out.append(("transfer", cursor, closed))
        cursor = closed
    if closed > cursor:
        out.append(("open", cursor, closed))
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _label(c: dict[str, Any]) -> str:
    remote = c.get("remote")
    where = f"{remote[0]}:{remote[1]}" if isinstance(remote, list) and len(remote) >= 2 else remote
    return f"#{c['id']} {c['transport']} {c.get('host') or where or '?'}"


def render_trace(run: Any, by: str | None = None, **_: Any) -> str:
    """Chrome trace-event JSON for a Run (`by` is not used: every connection has its own track)."""
    start = run.started
    events: list[dict[str, Any]] = []
    named: set[int] = set()
    for c in run.connections:
        pid = c["pid"]
        if pid not in named:
            named.add(pid)
            title = " ".join(run.program) if pid == run.pid else f"child {pid}"
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": title}})
        tid = c["id"]
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": _label(c)}})
        events.append(
            {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}}
        )
        figures = {k: c.get(k) for k in ("rx", "tx", "wire_rx", "wire_tx", "tls", "rtt", "error", "caller")}
        for phase, begin, stop in segments(c, run.finished):
            events.append(
                {
                    "ph": "X",
                    "name": phase,
                    "cat": "netstats",
                    "pid": pid,
                    "tid": tid,
                    # Both ends rounded, the length their difference: a phase ends exactly where
                    # the next begins (rounded apart, they overlapped by a nanosecond now and
                    # then, and Perfetto rejects partly overlapping slices).
                    "ts": _micro(begin - start),
                    "dur": max(0, _micro(stop - start) - _micro(begin - start)),
                    "args": figures,
                }
            )
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}) + "\n"
