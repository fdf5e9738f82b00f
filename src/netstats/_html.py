"""A run as one self-contained HTML file: a waterfall with a row per connection.

The page (`_timeline.html`, shipped with the package) carries its own styles and script and
fetches nothing: the run is embedded as JSON in a `<script type="application/json">`, with `<`,
`>`, `&`, `/` and the colon of `http:` escaped, so no text of the run can end that element or
read as a URL. The phases come from `_trace.segments()`, the same as `--format trace`.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from ._trace import PHASES, segments

_MARK = "/*NETSTATS_DATA*/"
_SCHEME = re.compile(r"(https?):", re.I)  # no text of the run reads as a URL, even escaped


def _peer(c: dict[str, Any]) -> str:
    remote = c.get("remote")
    if isinstance(remote, list) and len(remote) >= 2:
        where = f"[{remote[0]}]:{remote[1]}" if ":" in str(remote[0]) else f"{remote[0]}:{remote[1]}"
    else:
        where = str(remote) if remote else ""
    return where


def _overhead(c: dict[str, Any]) -> int | None:
    """TLS's bytes on the wire beyond the application's (both ways), or None where unknown."""
    parts = [c.get(k) for k in ("wire_rx", "wire_tx", "rx", "tx")]
    if any(not isinstance(v, int) for v in parts):
        return None
    wire_rx, wire_tx, rx, tx = parts
    return int(max(0, wire_rx + wire_tx - rx - tx))  # type: ignore[operator]


def _number(value: Any, otherwise: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else otherwise


def _row(c: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(PHASES)}
    remote = _peer(c)
    closed = _number(c.get("closed"), end)
    opened = _number(c.get("opened"), start)
    return {
        **{
            k: c.get(k)
            for k in ("id", "pid", "side", "transport", "host", "tls", "tls_resumed", "caller", "origin")
        },
        **{k: c.get(k) for k in ("error", "rx", "tx", "wire_rx", "wire_tx", "rtt")},
        **{k: c.get(k) for k in ("dns_time", "connect_time", "tls_time", "ttfb")},
        "peer": c.get("host") or remote or "?",
        "remote": remote,
        "overhead": _overhead(c) if c.get("tls") else None,
        "t0": round(opened - start, 6),
        "t1": round(closed - start, 6),
        "segs": [[index[p], round(a - start, 6), round(b - start, 6)] for p, a, b in segments(c, end)],
    }


def render_html(run: Any) -> str:
    """The timeline page for a Run (see the module docstring)."""
    start, end = run.started, run.finished
    rows = [_row(c, start, end) for c in run.connections]
    first = min([start, *(r["t0"] + start for r in rows), *(s[1] + start for r in rows for s in r["segs"])])
    if first < start:  # a lookup before the run's clock started: shift everything right
        for r in rows:
            r["t0"], r["t1"] = r["t0"] + start - first, r["t1"] + start - first
            r["segs"] = [[p, a + start - first, b + start - first] for p, a, b in r["segs"]]
    data = {
        "program": " ".join(run.program),
        "started": first,
        "exit_code": run.exit_code,
        "span": max([end - first, *(r["t1"] for r in rows)]),
        "phases": list(PHASES),
        "connections": rows,
    }
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("/", "\\/")):
        text = text.replace(char, escaped)
    text = _SCHEME.sub(r"\1\\u003a", text)  # (only in strings: the keys are netstats' own)
    page = resources.files(__package__).joinpath("_timeline.html").read_text(encoding="utf-8")
    return page.replace(_MARK, text, 1)
