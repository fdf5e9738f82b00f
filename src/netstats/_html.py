"""A run as one self-contained HTML file: a waterfall with a row per connection.

The page (`_timeline.html`, shipped with the package) carries its own styles and script and
fetches nothing: the run is embedded as JSON in a `<script type="application/json">`, with `<`,
`>`, `&`, `/` and the colon of `http:` escaped, so no text of the run can end that element or
read as a URL. Every name in it (hosts, places in the code, errors, tags, marks) is shown as the
text report shows it (`_format.visible`), and the page only ever sets it as text. The phases come
from `_trace.segments()`, the same as `--format trace`; the peer is `_trace.label()`, the text
report's PEER column.

Times in the page are seconds from the first connection's start (its DNS lookup, if any): the
axis begins there, not at the program's start, which is given as an offset.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from ._format import address, short_frame, visible
from ._trace import PHASES, exchanges, label, marks, segments

_MARK = "/*NETSTATS_DATA*/"
_SCHEME = re.compile(r"(https?):", re.I)  # no text of the run reads as a URL, even escaped
_INDEX = {name: i for i, name in enumerate(PHASES)}

_TEXTS = ("side", "transport", "source", "tls", "error", "unfinished")
_FIGURES = ("rx", "tx", "wire_rx", "wire_tx", "retransmits", "retrans_bytes", "reads", "writes")
_SPANS = ("rtt", "min_rtt", "dns_time", "connect_time", "tls_time", "ttfb")


def _text(value: Any) -> str | None:
    return visible(value) if isinstance(value, str) else None


def _number(value: Any, otherwise: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else otherwise


def _overhead(c: dict[str, Any]) -> int | None:
    """TLS's bytes on the wire beyond the application's (both ways), or None where unknown."""
    parts = [c.get(k) for k in ("wire_rx", "wire_tx", "rx", "tx")]
    if not c.get("tls") or any(not isinstance(v, int) for v in parts):
        return None
    wire_rx, wire_tx, rx, tx = parts
    return int(max(0, wire_rx + wire_tx - rx - tx))  # type: ignore[operator]


def _host_group(c: dict[str, Any], peer: str) -> str:
    """The text report's `--by host` key: accepted connections by the address accepting them."""
    return f"{visible(address(c.get('local')))} (in)" if c.get("side") == "server" else peer


def _row(c: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    def at(t: float | None) -> float | None:
        return None if t is None else round(t - start, 6)

    peer = label(c)
    caller, origin = _text(c.get("caller")), _text(c.get("origin"))
    tags = [
        {"labels": {visible(k): visible(v) for k, v in t["labels"].items()}, "rx": t["rx"], "tx": t["tx"]}
        for t in c.get("tags") or ()
    ]
    return {
        "id": c.get("id"),
        "pid": c.get("pid"),
        **{k: _text(c.get(k)) for k in _TEXTS},
        **{k: c.get(k) for k in (*_FIGURES, *_SPANS)},
        "tls_resumed": c.get("tls_resumed"),
        "connected": c.get("connected") is not None,  # (a refused attempt has no connect, no ttfb)
        "host": _text(c.get("host")),
        "peer": peer,
        "by_host": _host_group(c, peer),
        "remote": visible(address(c.get("remote"))),
        "local": visible(address(c.get("local"))),
        "caller": caller,
        "caller_short": visible(short_frame(c.get("caller"))),
        "origin": origin,
        "overhead": _overhead(c),
        "t0": round(_number(c.get("opened"), start) - start, 6),
        "t1": round(_number(c.get("closed"), end) - start, 6),
        "segs": [[_INDEX[p], round(a - start, 6), round(b - start, 6)] for p, a, b in segments(c, end)],
        "exchanges": [[at(s), at(f), at(last)] for s, f, last in exchanges(c)],
        "marks": [{**m, "time": at(m["time"])} for m in marks(c)],
        "tags": tags,
    }


def _shift(row: dict[str, Any], by: float) -> None:
    """Move a row's times `by` seconds earlier (the page's clock starts at the first connection)."""

    def move(t: float | None) -> float | None:
        return None if t is None else round(t - by, 6)

    row["t0"], row["t1"] = move(row["t0"]), move(row["t1"])
    row["segs"] = [[p, move(a), move(b)] for p, a, b in row["segs"]]
    row["exchanges"] = [[move(t) for t in e] for e in row["exchanges"]]
    for m in row["marks"]:
        m["time"] = move(m["time"])


def render_html(run: Any) -> str:
    """The timeline page for a Run (see the module docstring)."""
    start, end = run.started, run.finished
    rows = [_row(c, start, end) for c in run.connections]
    # The axis spans the connections: from the first one's first phase to the last one's end.
    first = min((x for r in rows for x in (r["t0"], *(s[1] for s in r["segs"]))), default=0.0)
    last = max((x for r in rows for x in (r["t1"], *(s[2] for s in r["segs"]))), default=end - start)
    for r in rows:
        _shift(r, first)
    data = {
        "program": visible(" ".join(run.program)),
        "started": start,  # the program's start, wall-clock
        "offset": round(first, 6),  # where the axis starts: the first connection, seconds after
        "ran": round(end - start, 6),
        "exit_code": run.exit_code,
        "span": round(max(last - first, 0.0), 6),
        "processes": len({r["pid"] for r in rows}),
        "phases": list(PHASES),
        "connections": rows,
    }
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("/", "\\/")):
        text = text.replace(char, escaped)
    text = _SCHEME.sub(r"\1\\u003a", text)  # (only in strings: the keys are netstats' own)
    page = resources.files(__package__).joinpath("_timeline.html").read_text(encoding="utf-8")
    return page.replace(_MARK, text, 1)
