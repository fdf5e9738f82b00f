"""The timeline: `--format trace` (Chrome trace events) and `--html` (one offline page), from
`netstats run` and `netstats report`; the page checked in a real browser (Debian's chromium,
driven by playwright, every request but the file itself blocked)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

TIMEOUT = 120
THINK = 0.25  # the program's server waits this long before it answers
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# A program with its own server (made before any connection: netstats does not count it, as
# `netstats run` counts no accepted connection without --servers): 3 connections by name, 2 by
# number, each sending a request and reading SIZES[i] bytes after the server's wait.
PROGRAM = """\
import socket, sys, threading, time

SIZES = [1000, 50000, 3000, 200000, 7000]
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]


def answer(c):
    with c:
        size = int(c.recv(100).split()[0])
        time.sleep(THINK)
        c.sendall(b"x" * size)


def serve():
    for _ in SIZES:
        c, _ = srv.accept()
        threading.Thread(target=answer, args=(c,)).start()


threading.Thread(target=serve, daemon=True).start()
for i, size in enumerate(SIZES):
    host = "localhost" if i % 2 == 0 else "127.0.0.1"
    family, kind, proto, _, address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.settimeout(30)
        s.connect(address)
        s.sendall(b"%d\\n" % size)
        got = 0
        while got < size:
            chunk = s.recv(65536)
            assert chunk
            got += len(chunk)
""".replace("THINK", repr(THINK))
SIZES = [1000, 50000, 3000, 200000, 7000]


def netstats(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "netstats", *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of PROGRAM with --format json, --html and a second run with --format trace."""
    folder = tmp_path_factory.mktemp("timeline")
    (folder / "prog.py").write_text(PROGRAM, encoding="utf-8")
    netstats("run", "--format", "json", "-o", "run.json", "--html", "run.html", "prog.py", cwd=folder)
    netstats("run", "--format", "trace", "-o", "run.trace.json", "--html", "run2.html", "prog.py", cwd=folder)
    return folder


def _connections(folder: Path) -> list[dict[str, Any]]:
    conns = json.loads((folder / "run.json").read_text())["connections"]
    assert len(conns) == len(SIZES), conns
    return conns  # type: ignore[no-any-return]


def test_the_json_report_has_each_connections_phases(outputs: Path) -> None:
    for i, c in enumerate(_connections(outputs)):
        assert c["rx"] == SIZES[i]
        assert c["ttfb"] is not None and THINK - 0.011 <= c["ttfb"] < THINK + 2.0
        assert c["connect_time"] is not None and c["tls_time"] is None
        assert (c["dns_time"] is None) == (i % 2 == 1)  # a literal address needs no lookup


def _check_trace(data: Any) -> None:
    events = data["traceEvents"]
    names = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(names) == len(SIZES) and len({e["tid"] for e in names}) == len(SIZES)
    for e in names:
        mine = [x for x in events if x["ph"] == "X" and x["tid"] == e["tid"]]
        phases = {x["name"]: x for x in mine}
        assert {"connect", "waiting", "transfer"} <= set(phases), phases
        assert THINK - 0.011 <= phases["waiting"]["dur"] / 1e6 < THINK + 2.0
        for x in mine:
            assert isinstance(x["ts"], (int, float)) and x["ts"] >= 0 and x["dur"] >= 0
        assert phases["connect"]["ts"] <= phases["waiting"]["ts"] <= phases["transfer"]["ts"]


def test_format_trace_is_chrome_trace_events_with_a_track_per_connection(outputs: Path) -> None:
    _check_trace(json.loads((outputs / "run.trace.json").read_text()))


def test_report_rerenders_a_saved_run_as_trace_and_html(outputs: Path) -> None:
    done = netstats("report", "run.json", "--format", "trace", "--html", "again.html", cwd=outputs)
    _check_trace(json.loads(done.stdout))
    assert (outputs / "again.html").read_text() == (outputs / "run.html").read_text()


def _offline(page: str) -> None:
    """No way for the page to reach the network: no URL, nothing loaded or imported."""
    assert not re.search(r"https?:", page, re.I)
    assert not re.search(r"""\b(src|href|srcset|action)\s*=""", page, re.I)
    assert not re.search(
        r"url\s*\(|@import|\bimport\s*\(|\bimport\s|fetch\s*\(|XMLHttpRequest|WebSocket", page
    )


def test_the_page_is_self_contained_and_the_data_cannot_break_out(tmp_path: Path) -> None:
    # The program's name is the run's text an attacker might control most easily.
    evil = "</script><script>alert(1)</script> https://example.invalid/x.js & <b>"
    run = {
        "schema": "netstats.run/1",
        "program": ["prog.py", evil],
        "pid": 1,
        "started": 100.0,
        "finished": 101.0,
        "exit_code": 0,
        "connections": [
            {
                "id": 1,
                "pid": 1,
                "transport": "tcp",
                "host": evil,
                "opened": 100.1,
                "closed": 100.5,
                "rx": 5,
                "tx": 1,
            }
        ],
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    netstats("report", "run.json", "--html", "page.html", "-o", "out.txt", cwd=tmp_path)
    page = (tmp_path / "page.html").read_text()
    _offline(page)
    assert page.count("</script>") == 2  # the data's and the code's, nothing from the run
    data = re.search(r'<script type="application/json" id="netstats-data">(.*?)</script>', page, re.S)
    assert data is not None
    parsed = json.loads(data.group(1))
    assert parsed["program"] == f"prog.py {evil}" and parsed["connections"][0]["host"] == evil


# ---- in a browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (the test extra)")
        pytest.skip("playwright is not installed (the test extra)")
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=60_000)
        yield b
        b.close()


def open_page(browser: Any, path: Path) -> tuple[Any, list[str], list[str]]:
    """The page at path, with every other request blocked (and listed), console errors listed."""
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    errors: list[str] = []
    blocked: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    url = path.resolve().as_uri()

    def route(r: Any) -> None:
        if r.request.url == url:
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return page, errors, blocked


def conn_ids(page: Any) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all(".row.conn", "rows => rows.map(r => r.dataset.id)")]


def test_the_page_shows_a_row_per_connection_filters_sorts_and_groups(
    browser: Any, outputs: Path, tmp_path: Path
) -> None:
    conns = _connections(outputs)
    page, errors, blocked = open_page(browser, outputs / "run.html")
    assert sorted(conn_ids(page)) == sorted(c["id"] for c in conns)
    # one bar per phase the run recorded, coloured by phase
    assert page.locator(".row.conn .seg").count() >= 3 * len(conns)

    page.fill("#filter", "localhost")
    page.wait_for_function(f"document.body.dataset.matching === '{sum(1 for c in conns if c['host'])}'")
    assert sorted(conn_ids(page)) == sorted(c["id"] for c in conns if c["host"] == "localhost")
    page.fill("#filter", "")

    page.select_option("#sort", "bytes")
    by_size = [c["id"] for c in sorted(conns, key=lambda c: -SIZES[conns.index(c)])]
    page.wait_for_function(f"document.querySelector('.row.conn').dataset.id === '{by_size[0]}'")
    assert conn_ids(page) == by_size

    page.select_option("#group", "host")
    page.wait_for_selector(".row.group")
    groups = page.eval_on_selector_all(".row.group .key", "keys => keys.map(k => k.textContent)")
    # host:port, as the text report's PEER column: a host's ports are not merged
    assert sorted(groups) == sorted({f"{c['host'] or c['remote'][0]}:{c['remote'][1]}" for c in conns})

    page.select_option("#group", "")
    page.hover(f".row.conn[data-id='{conns[0]['id']}'] .bar")
    tip = page.text_content("#tip") or ""
    assert f"#{conns[0]['id']}" in tip and "ttfb" in tip
    shot = tmp_path / "timeline.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    assert errors == [] and blocked == []
    page.close()


def test_ten_thousand_connections_load_in_a_few_seconds(browser: Any, tmp_path: Path) -> None:
    n = 10_000
    conns = []
    for i in range(n):
        t = 1000.0 + i * 0.001
        conns.append(
            {
                "id": i + 1,
                "pid": 7 + i % 3,
                "transport": "tcp",
                "side": "client",
                "host": f"host{i % 50}.test",
                "remote": ["10.0.0.1", 443],
                "tls": "TLSv1.3",
                "rx": 1000 + i,
                "tx": 200,
                "wire_rx": 1100 + i,
                "wire_tx": 400,
                "opened": t,
                "connected": t + 0.002,
                "closed": t + 0.05,
                "dns_time": 0.001,
                "connect_time": 0.002,
                "tls_time": 0.004,
                "tls_started": t + 0.002,
                "first_write": t + 0.006,
                "ttfb": 0.02,
                "caller": f"app.py:{i % 40} in f",
            }
        )
    run = {
        "schema": "netstats.run/1",
        "program": ["big.py"],
        "pid": 7,
        "started": 999.0,
        "finished": 1011.0,
        "exit_code": 0,
        "connections": conns,
    }
    (tmp_path / "big.json").write_text(json.dumps(run))
    netstats("report", "big.json", "--html", "big.html", "-o", "out.txt", cwd=tmp_path)
    started = time.monotonic()
    page, errors, blocked = open_page(browser, tmp_path / "big.html")
    took = time.monotonic() - started
    print(f"10,000 connections: page ready in {took:.2f} s")
    assert took < 10.0  # "a few seconds", with room for a machine shared with other work
    assert page.evaluate("document.body.dataset.matching") == str(n)
    assert 0 < page.locator(".row.conn").count() < 200  # only the rows in sight are in the page
    page.evaluate("document.getElementById('scroller').scrollTop = 1e9")
    page.wait_for_selector(f".row.conn[data-id='{n}']")
    page.fill("#filter", "host7.test")
    page.wait_for_function(f"document.body.dataset.matching === '{n // 50}'")
    page.screenshot(path=str(tmp_path / "big.png"))
    print(f"screenshot: {tmp_path / 'big.png'}")
    assert errors == [] and blocked == []
    page.close()


# ---- a saved run is data: nothing it holds may make the page throw or hang --------------------


def saved(folder: Path, started: float, finished: float, opened: float, closed: float) -> Path:
    run = {"schema": "netstats.run/1", "program": ["app.py"], "pid": 7, "started": started}
    run |= {"finished": finished, "exit_code": 0, "connections": [{"id": 1, "pid": 7, "transport": "tcp"}]}
    run["connections"][0] |= {"host": "far.test", "opened": opened, "closed": closed, "rx": 5, "tx": 5}
    path = folder / "run.json"
    path.write_text(json.dumps(run))
    return path


@pytest.mark.parametrize(
    ("started", "finished", "opened", "closed"),
    [(0.0, 9.9e9, 1.0, 9.8e9), (9.9e9, 9.9e9 + 1, 9.9e9, 9.9e9 + 0.5)],
    ids=["a-300-year-run", "started-in-the-year-2283"],
)
def test_the_page_of_the_longest_run_a_file_may_hold_loads_with_a_few_axis_ticks(
    browser: Any, tmp_path: Path, started: float, finished: float, opened: float, closed: float
) -> None:
    saved(tmp_path, started, finished, opened, closed)
    netstats("report", "run.json", "--html", "page.html", "-o", "out.txt", cwd=tmp_path)
    page, errors, blocked = open_page(browser, tmp_path / "page.html")  # ready, not hung
    assert 2 <= page.locator("#axis .tick").count() <= 1400 // 90 + 1  # a tick per 90 px at most
    assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.text_content("#summary") or "")
    assert conn_ids(page) == [1]
    assert errors == [] and blocked == []
    page.close()


@pytest.mark.parametrize(
    ("started", "finished", "opened", "closed"),
    [(1.0, 2.0, -1e308, 1e308), (1e17, 1e17 + 1, 1e17, 1e17), (0.0, 1e12, 1.0, 2.0)],
    ids=["opened-1e308", "started-1e17", "span-1e12"],
)
def test_a_saved_run_with_absurd_times_gets_no_page_and_no_trace_but_one_line(
    tmp_path: Path, started: float, finished: float, opened: float, closed: float
) -> None:
    saved(tmp_path, started, finished, opened, closed)
    for options in (["--html", "page.html"], ["--format", "trace"]):
        done = subprocess.run(
            [sys.executable, "-m", "netstats", "report", "run.json", *options],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert (done.returncode, done.stdout) == (2, ""), done.stderr  # no Infinity, no traceback
        assert done.stderr.count("\n") == 1 and "must be a time in seconds since 1970" in done.stderr
        assert not (tmp_path / "page.html").exists()


seconds = st.floats(0, 5)
maybe = st.none() | st.floats(0, 2)


@settings(max_examples=300, deadline=None)
@given(
    start=st.floats(1.7e9, 1.8e9),
    times=st.lists(seconds, min_size=5, max_size=5),
    tls=st.none() | st.tuples(st.floats(-1, 1), seconds),
    calls=st.lists(st.tuples(st.floats(0, 2), maybe, maybe), max_size=6),
)
def test_trace_phases_of_a_connection_never_partly_overlap(
    start: float,
    times: list[float],
    tls: tuple[float, float] | None,
    calls: list[tuple[float, float | None, float | None]],
) -> None:
    """Perfetto rejects slices of one track that partly overlap: however the phases' times
    round, one phase ends at or before the next begins, with a TLS handshake (even one said to
    start before the connect ended) and each request/response exchange as its own slices (the
    page and text are not involved)."""
    from netstats._report import Run, render

    dns, connect, wait, ttfb, rest = times
    opened = start + dns
    conn: dict[str, Any] = {
        "id": 1, "pid": 7, "transport": "tcp", "side": "client", "remote": ["127.0.0.1", 80],
        "opened": opened, "dns_time": dns, "connect_time": connect,
        "first_write": opened + connect + wait, "ttfb": ttfb,
    }  # fmt: skip
    clock = opened + connect
    if tls is not None:
        conn["tls_started"], conn["tls_time"] = clock + tls[0], tls[1]
        clock += max(0.0, tls[0]) + tls[1]
    exchanges = []
    for gap, first, last in calls:  # sent, first byte, last byte, one after another
        sent = clock + gap
        got = None if first is None else sent + first
        end = None if got is None or last is None else got + last
        exchanges.append([sent, got, end])
        clock = end or got or sent
    conn["exchanges"] = exchanges
    conn["closed"] = max(clock, conn["first_write"] + ttfb) + rest
    run = Run(
        program=["p.py"], pid=7, started=start, finished=conn["closed"] + 1, exit_code=0, connections=[conn]
    )
    events = json.loads(render(run, "trace"))["traceEvents"]
    slices = sorted((e["ts"], e["dur"]) for e in events if e["ph"] == "X")
    for (ts, dur), (next_ts, next_dur) in zip(slices, slices[1:], strict=False):
        assert ts + dur <= next_ts or next_ts + next_dur <= ts + dur, (ts, dur, next_ts, next_dur)
    answered = [e for e in exchanges if e[1] is not None]
    if answered:  # each answered exchange: its own waiting and transfer
        assert sum(e["name"] == "waiting" for e in events) == len(answered)
        assert sum(e["name"] == "transfer" for e in events) == len(answered)


# ---- the page as a DevTools network panel: hand-made runs with known figures ----------------

PORT = 8443


def conn(id: int, opened: float, closed: float, **fields: Any) -> dict[str, Any]:
    """A connection record as a saved run holds it (every field the page reads, by default a
    plain client connection to localhost:8443 that sent 100 bytes and read 1000)."""
    record = {
        "id": id, "pid": 7, "side": "client", "transport": "tcp", "source": "python",
        "local": ["127.0.0.1", 40000 + id], "remote": ["127.0.0.1", PORT], "host": "localhost",
        "tls": None, "rx": 1000, "tx": 100, "wire_rx": 1000, "wire_tx": 100,
        "rtt": None, "min_rtt": None, "retransmits": None, "retrans_bytes": None,
        "reads": 1, "writes": 1, "opened": opened, "connected": opened + 0.001, "closed": closed,
        "duration": closed - opened, "dns_time": None, "connect_time": 0.001, "tls_time": None,
        "tls_resumed": None, "ttfb": None, "tls_started": None, "first_write": None,
        "marks": [], "tags": [], "origin": None, "caller": "app.py:3 in main", "error": None,
    }  # fmt: skip
    return record | fields


def save(folder: Path, conns: list[dict[str, Any]], **run: Any) -> None:
    """A saved run holding conns, and its page by `netstats report --html` (page.html)."""
    data = {"schema": "netstats.run/1", "program": ["app.py"], "pid": 7, "started": 100.0, "finished": 110.0}
    data |= {"exit_code": 0, "connections": conns, **run}
    (folder / "run.json").write_text(json.dumps(data))
    netstats("report", "run.json", "--html", "page.html", "-o", "out.txt", cwd=folder)


def page_of(
    browser: Any, folder: Path, conns: list[dict[str, Any]], **run: Any
) -> tuple[Any, list[str], list[str]]:
    """The page of a saved run holding conns (see save), in the browser."""
    save(folder, conns, **run)
    _offline((folder / "page.html").read_text())
    return open_page(browser, folder / "page.html")


def trace_of(folder: Path) -> list[dict[str, Any]]:
    """The trace events of the saved run in folder (see page_of)."""
    return json.loads(netstats("report", "run.json", "--format", "trace", cwd=folder).stdout)["traceEvents"]  # type: ignore[no-any-return]


def cells_of(page: Any, id: int) -> dict[str, str]:
    """A row's cells by their column's heading."""
    heads = page.eval_on_selector_all(".head > div", "hs => hs.map(h => h.textContent)")
    cells = page.eval_on_selector_all(f".row.conn[data-id='{id}'] > div", "cs => cs.map(c => c.textContent)")
    return dict(zip(heads, cells, strict=True))


def tip_of(page: Any, selector: str) -> str:
    page.hover(selector)
    page.wait_for_selector("#tip", state="visible")
    return page.text_content("#tip") or ""


def tip_id(page: Any) -> str | None:
    """The id of the connection whose details the tooltip shows."""
    found = re.search(r"^#(\d+) ", page.text_content("#tip") or "", re.M)
    return found.group(1) if found else None


def test_the_tooltip_follows_the_row_under_the_pointer_after_a_wheel_scroll(
    browser: Any, tmp_path: Path
) -> None:
    conns = [conn(i, 101 + i * 0.01, 101.5 + i * 0.01) for i in range(1, 301)]
    page, errors, blocked = page_of(browser, tmp_path, conns)
    box = page.locator(".row.conn[data-id='5'] .bar").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    assert tip_id(page) == "5"
    page.mouse.wheel(0, 22 * 20)  # twenty rows down, the pointer where it was
    page.wait_for_function("document.getElementById('scroller').scrollTop > 0")
    page.wait_for_timeout(300)
    under = page.evaluate(f"document.elementFromPoint({x}, {y}).closest('.row').dataset.id")
    assert under != "5"
    assert tip_id(page) == under
    assert errors == [] and blocked == []
    page.close()


def seg_boxes(page: Any, id: int, phase: str) -> list[dict[str, float]]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        f".row.conn[data-id='{id}'] .seg[style*='var(--{phase})']",  # (coloured by phase)
        "segs => segs.map(s => s.getBoundingClientRect()).map(r => ({left: r.left, right: r.right}))",
    )


def test_the_axis_starts_at_the_first_connection_not_at_the_programs_start(
    browser: Any, tmp_path: Path
) -> None:
    # 5 s of imports before the first connection, then two connections over one second
    conns = [conn(1, 105.0, 105.5), conn(2, 105.5, 106.0)]
    page, errors, blocked = page_of(browser, tmp_path, conns, finished=106.0)
    axis = page.locator("#axis").bounding_box()
    assert abs(seg_boxes(page, 1, "connect")[0]["left"] - axis["x"]) < 2
    assert abs(seg_boxes(page, 2, "open")[-1]["right"] - (axis["x"] + axis["width"])) < 2
    assert "5.000 s after the program's start" in (page.text_content("#summary") or "")
    assert page.text_content("#axis .tick") == "0"
    assert errors == [] and blocked == []
    page.close()


def window(page: Any) -> tuple[float, float]:
    a, b = page.evaluate("document.body.dataset.window").split()
    return float(a), float(b)


def test_zoom_in_by_a_drag_or_ctrl_wheel_and_back_by_escape_double_click_or_the_button(
    browser: Any, tmp_path: Path
) -> None:
    conns = [conn(1, 101.0, 105.0), conn(2, 102.0, 103.0)]  # the axis spans 4 s
    page, errors, blocked = page_of(browser, tmp_path, conns)
    assert window(page) == (0.0, 4.0) and page.is_hidden("#reset")
    axis = page.locator("#axis").bounding_box()
    bar = page.locator(".row.conn[data-id='2'] .bar").bounding_box()
    y = bar["y"] + bar["height"] / 2

    def drag(start: float, stop: float) -> None:  # from one share of the axis to another
        page.mouse.move(axis["x"] + start * axis["width"], y)
        page.mouse.down()
        page.mouse.move(axis["x"] + stop * axis["width"], y, steps=5)
        page.mouse.up()

    before = seg_boxes(page, 2, "open")[0]
    drag(0.25, 0.5)  # seconds 1 to 2: connection 2's whole life
    a, b = window(page)
    assert abs(a - 1.0) < 0.05 and abs(b - 2.0) < 0.05
    after = seg_boxes(page, 2, "open")[0]
    assert (after["right"] - after["left"]) > 3.5 * (before["right"] - before["left"])  # 4 times as wide
    assert page.is_visible("#reset") and "showing +" in (page.text_content("#zoom") or "")
    ticks = page.eval_on_selector_all("#axis .tick", "ts => ts.map(t => t.textContent)")
    assert "0" not in ticks and len(ticks) >= 2

    page.keyboard.press("Escape")
    assert window(page) == (0.0, 4.0) and page.is_hidden("#reset")

    drag(0.5, 0.75)
    assert window(page)[0] > 1.9
    page.dblclick(".row.conn[data-id='1'] .bar")
    assert window(page) == (0.0, 4.0)

    page.mouse.move(axis["x"] + axis["width"] / 2, y)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    page.wait_for_function("document.body.dataset.window !== '0 4'")
    a, b = window(page)
    assert 0 < a < 2 < b < 4  # narrower, around the pointer
    page.click("#reset")
    assert window(page) == (0.0, 4.0)
    assert errors == [] and blocked == []
    page.close()


# Four request/response exchanges on one kept-alive connection: sent, first byte, last byte.
EXCHANGES = [[101.1, 101.3, 101.35], [101.5, 101.6, 101.9], [102.0, 102.4, 102.41], [102.5, 102.7, 102.8]]


def test_each_exchange_of_a_kept_alive_connection_is_its_own_waiting_and_transfer(
    browser: Any, tmp_path: Path
) -> None:
    conns = [
        conn(1, 101.0, 103.0, exchanges=EXCHANGES, first_write=101.1, ttfb=0.2),
        conn(2, 101.0, 103.0, first_write=101.1, ttfb=0.2),  # an older run's record: one exchange
        conn(3, 101.0, 103.0, exchanges=None, first_write=101.1, ttfb=0.2),
    ]
    page, errors, blocked = page_of(browser, tmp_path, conns)
    waiting, transfer = seg_boxes(page, 1, "waiting"), seg_boxes(page, 1, "transfer")
    assert len(waiting) == len(transfer) == len(EXCHANGES)
    axis = page.locator("#axis").bounding_box()
    px = axis["width"] / 2.0  # per second: the axis spans 2 s, from 101.0
    for (sent, first, last), w, t in zip(EXCHANGES, waiting, transfer, strict=True):
        assert abs(w["left"] - (axis["x"] + (sent - 101) * px)) < 2
        assert abs(w["right"] - (axis["x"] + (first - 101) * px)) < 2
        assert abs(t["right"] - (axis["x"] + (last - 101) * px)) < 2.5  # (a 1-px segment at least)
    for old in (2, 3):
        assert len(seg_boxes(page, old, "waiting")) == len(seg_boxes(page, old, "transfer")) == 1
    tip = tip_of(page, ".row.conn[data-id='1'] .bar")
    assert "4: sent +1.500 s  waiting 200.0 ms  transfer 100.0 ms" in tip
    second = seg_boxes(page, 1, "waiting")[1]
    page.mouse.move(
        (second["left"] + second["right"]) / 2,
        page.locator(".row.conn[data-id='1'] .bar").bounding_box()["y"] + 7,
    )
    assert (page.text_content("#tip") or "").startswith(
        "\u25b8 waiting 100.0 ms, +500.0 ms to +600.0 ms\n#1 "
    )
    assert errors == [] and blocked == []
    page.close()

    trace = [e for e in trace_of(tmp_path) if e["ph"] == "X" and e["tid"] == 1]
    for name, i, j in (("waiting", 0, 1), ("transfer", 1, 2)):
        slices = [(e["ts"], e["dur"]) for e in trace if e["name"] == name]
        want = [(round((x[i] - 100) * 1e6), round((x[j] - x[i]) * 1e6)) for x in EXCHANGES]
        assert len(slices) == len(want) and all(
            abs(a - c) <= 1 and abs(b - d) <= 1 for (a, b), (c, d) in zip(slices, want, strict=True)
        )


def test_marks_and_tags_are_in_the_details_and_in_the_trace(browser: Any, tmp_path: Path) -> None:
    mark = {"name": "headers", "time": 101.25, "rx": 312, "tx": 78, "elapsed": 0.25}
    tags = [{"labels": {"route": "/users"}, "rx": 700, "tx": 60}]
    page, errors, blocked = page_of(browser, tmp_path, [conn(1, 101.0, 102.0, marks=[mark], tags=tags)])
    tip = tip_of(page, ".row.conn[data-id='1'] .bar")
    assert "headers at +250.0 ms: sent 78 B, received 312 B in 250.0 ms" in tip
    assert "route=/users: sent 60 B, received 700 B" in tip
    assert page.locator(".row.conn[data-id='1'] .mk").count() == 1
    assert "a netstats.mark()" in (page.text_content("#legend") or "")
    assert errors == [] and blocked == []
    page.close()

    events = trace_of(tmp_path)
    instants = [e for e in events if e["ph"] == "i"]
    assert [(e["name"], e["ts"], e["tid"], e["args"]["rx"], e["args"]["tx"]) for e in instants] == [
        ("headers", 1_250_000, 1, 312, 78)
    ]
    assert all(e["args"]["tags"] == tags for e in events if e["ph"] == "X")


def test_every_figure_of_the_record_is_in_the_details(browser: Any, tmp_path: Path) -> None:
    record = conn(
        1, 101.0, 102.0, rtt=0.0123, min_rtt=0.0101, retransmits=3, retrans_bytes=4000, reads=7, writes=2,
        local=["127.0.0.1", 5555], caller="app.py:3 in main", origin="lib/http.py:40 in send",
        unfinished="process lost", error="ConnectionResetError",
    )  # fmt: skip
    page, errors, blocked = page_of(browser, tmp_path, [record])
    tip = tip_of(page, ".row.conn[data-id='1'] .bar")
    for shown in (
        "rtt       12.3 ms (min 10.1 ms)   retransmits 3 (3.9 KiB)",
        "local     127.0.0.1:5555   side client",
        "peer      localhost:8443   remote 127.0.0.1:8443",
        "source    python",
        "sent      100 B in 2 writes   received 1000 B in 7 reads",
        "unfinished process lost",
        "error     ConnectionResetError",
        "caller    app.py:3 in main",
        "origin    lib/http.py:40 in send",
    ):
        assert shown in tip, (shown, tip)
    assert cells_of(page, 1)["time"] == "\u22651.000 s"  # at least: it was still open
    assert "\u2265unfinished" in (page.text_content("#legend") or "")
    assert errors == [] and blocked == []
    page.close()


def test_a_census_row_shows_tls_unknown_and_says_the_kernel_found_it(browser: Any, tmp_path: Path) -> None:
    census = conn(
        1, 101.0, 102.0, source="kernel", rx=None, tx=None, reads=None, writes=None, connect_time=None
    )
    page, errors, blocked = page_of(browser, tmp_path, [census])
    cells = cells_of(page, 1)
    assert cells["TLS+"] == "?" and cells["bytes"] == "?"  # TLS or not, and its bytes: unknown
    assert cells["proto"] == "tcp+? (C)"  # as the text report's PROTO
    tip = tip_of(page, ".row.conn[data-id='1'] .bar")
    assert "found by the kernel" in tip and "TLS ?" in tip and "TLS+ ?" in tip
    legend = page.text_content("#legend") or ""
    assert "(C)found by the kernel census" in legend and "?unknown" in legend and "-not applicable" in legend
    assert errors == [] and blocked == []
    page.close()
    text = (tmp_path / "out.txt").read_text()  # the text report says the same
    assert "tcp+? (C)" in text


def test_a_failed_tls_handshake_shows_the_time_it_took(browser: Any, tmp_path: Path) -> None:
    failed = conn(1, 101.0, 101.1, tls_started=101.002, tls_time=0.028, error="SSLCertVerificationError")
    refused = conn(2, 101.0, 101.1, connected=None, connect_time=None, error="ConnectionRefusedError")
    page, errors, blocked = page_of(browser, tmp_path, [failed, refused])
    # connected, then the handshake failed: no request was sent, so no first byte is known
    assert "DNS ?  connect 1.0 ms  TLS 28.0 ms  ttfb ?" in tip_of(page, ".row.conn[data-id='1'] .bar")
    # refused: there was no connect and no first byte to time, not an unknown one
    assert "DNS ?  connect -  TLS -  ttfb -" in tip_of(page, ".row.conn[data-id='2'] .bar")
    assert len(seg_boxes(page, 1, "tls")) == 1
    assert errors == [] and blocked == []
    page.close()


def test_a_connection_with_unknown_application_bytes_sorts_by_its_wire_bytes(
    browser: Any, tmp_path: Path
) -> None:
    conns = [
        conn(
            1, 101.0, 101.1, rx=0, tx=0, wire_rx=0, wire_tx=0, connected=None, error="ConnectionRefusedError"
        ),
        conn(2, 101.0, 102.0, source="kernel", rx=None, tx=None, wire_rx=50_000, wire_tx=300),
        conn(3, 101.0, 102.0),  # 1100 bytes
    ]
    page, errors, blocked = page_of(browser, tmp_path, conns)
    page.select_option("#sort", "bytes")
    page.wait_for_function("document.querySelector('.row.conn').dataset.id === '2'")
    assert conn_ids(page) == [2, 3, 1]
    assert errors == [] and blocked == []
    page.close()


def test_a_merged_run_of_several_processes_shows_a_pid_column(browser: Any, tmp_path: Path) -> None:
    conns = [conn(1, 101.0, 102.0), conn(1, 101.5, 102.0, pid=8, host="other.test")]
    page, errors, blocked = page_of(browser, tmp_path, conns)
    pids = page.eval_on_selector_all(
        ".row.conn .pidcol", "cs => cs.map(c => c.offsetWidth ? c.textContent : null)"
    )
    assert sorted(pids) == ["7", "8"]
    assert page.is_visible(".head .pidcol")
    assert "pid 8" in tip_of(page, ".row.conn[data-pid='8'] .bar")
    assert errors == [] and blocked == []
    page.close()


def test_one_process_has_no_pid_column(browser: Any, tmp_path: Path) -> None:
    page, errors, blocked = page_of(browser, tmp_path, [conn(1, 101.0, 102.0)])
    assert page.is_hidden(".head .pidcol")
    page.close()


CUT = """els => els.filter(e => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)
                  .map(e => e.textContent)"""


def test_no_text_is_cut_in_the_tooltip_the_group_headers_or_the_legend(browser: Any, tmp_path: Path) -> None:
    origin = (
        "/srv/app/" + "/".join(f"package_{i}" for i in range(20)) + "/client.py:3076 in a_long_function_name"
    )
    conns = [
        conn(i, 101 + i * 1e-4, 102.0, origin=origin, caller="app/service/client.py:123 in fetch")
        for i in range(1, 3077)
    ]
    page, errors, blocked = page_of(browser, tmp_path, conns)
    tip = tip_of(page, ".row.conn[data-id='1'] .bar")
    assert origin in tip.replace("\n", "")
    assert page.eval_on_selector_all("#tip", CUT) == []
    box = page.locator("#tip").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 1400
    for by in ("host", "caller"):
        page.select_option("#group", by)
        page.wait_for_selector(".row.group")
        assert "3076" in (page.text_content(".row.group") or "")
        assert (
            page.eval_on_selector_all(".row.group > div, #legend span, #summary, #controls *, #axis", CUT)
            == []
        )
    assert errors == [] and blocked == []
    page.close()


def test_the_peer_is_named_alike_in_the_text_report_the_page_and_the_trace(
    browser: Any, outputs: Path
) -> None:
    conns = _connections(outputs)
    # what the program connected to: the name it asked for (else the address), and the port
    expected = {c["id"]: f"{c['host'] or c['remote'][0]}:{c['remote'][1]}" for c in conns}
    text = netstats("report", "run.json", cwd=outputs).stdout
    rows = [line.split() for line in text.splitlines() if line.split()[:1] == [str(conns[0]["pid"])]]
    assert sorted(row[2] for row in rows) == sorted(expected.values()), text  # PID PROTO PEER ...
    page, errors, blocked = open_page(browser, outputs / "run.html")
    page.select_option("#group", "host")
    page.wait_for_selector(".row.group")
    keys = page.eval_on_selector_all(".row.group .key", "keys => keys.map(k => k.textContent)")
    assert sorted(keys) == sorted(set(expected.values()))
    page.select_option("#group", "")
    page.wait_for_selector(".row.conn")
    assert {i: cells_of(page, i)["peer"] for i in expected} == expected
    page.close()
    trace = json.loads(netstats("report", "run.json", "--format", "trace", cwd=outputs).stdout)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in trace if e["name"] == "thread_name"}
    assert names == {i: f"#{i} tcp {p}" for i, p in expected.items()}


def test_hostile_names_stay_text_everywhere_on_the_page(browser: Any, tmp_path: Path) -> None:
    evil = '<svg onload="document.body.dataset.owned=1"></svg>\u202e\x1b[31m'
    record = conn(
        1, 101.0, 102.0, host=evil, caller=evil, origin=evil, error=evil, tls=evil, unfinished=evil,
        marks=[{"name": evil, "time": 101.5, "rx": 1, "tx": 1, "elapsed": 0.5}],
        tags=[{"labels": {evil: evil}, "rx": 1, "tx": 1}],
    )  # fmt: skip
    page, errors, blocked = page_of(browser, tmp_path, [record], program=[evil])
    tip = tip_of(page, ".row.conn[data-id='1'] .bar")
    page.select_option("#group", "caller")
    page.wait_for_selector(".row.group")
    assert page.locator("svg").count() == 0 and page.evaluate("document.body.dataset.owned") is None
    escaped = (
        '<svg onload="document.body.dataset.owned=1"></svg>\\u202e\\x1b[31m'  # as the text report shows it
    )
    assert escaped in tip and "\u202e" not in tip and "\x1b" not in tip
    assert escaped in (page.text_content("#summary") or "")
    trace = json.dumps(trace_of(tmp_path), ensure_ascii=False)  # (the trace names it escaped too)
    assert "\u202e" not in trace and "\x1b" not in trace and "\\\\u202e" in trace
    assert errors == [] and blocked == []
    page.close()


# A real small run for the docs' picture: two requests over one kept-alive connection, then one
# over TLS (http.client, as a user's program would), against the tests' own HTTP peers.
KEEP_ALIVE = """\
import http.client, ssl, sys

port, tls_port, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
plain = http.client.HTTPConnection("localhost", port, timeout=30)
for size in (5000, 20000):
    plain.request("GET", f"/bytes/{size}")
    assert len(plain.getresponse().read()) == size
plain.close()
context = ssl.create_default_context(cafile=ca)
secure = http.client.HTTPSConnection("localhost", tls_port, timeout=30, context=context)
secure.request("GET", "/bytes/3000")
assert len(secure.getresponse().read()) == 3000
secure.close()
"""


def test_the_timeline_of_a_real_run_with_keep_alive_and_tls(
    browser: Any, tmp_path: Path, peer: Any, ca_file: str
) -> None:
    """Kept as a picture for the docs: at $NETSTATS_SCREENSHOT_DIR/timeline.png when set."""
    plain, secure = peer("http"), peer("http", tls=True)
    (tmp_path / "prog.py").write_text(KEEP_ALIVE)
    args = ["prog.py", str(plain.port), str(secure.port), ca_file]
    netstats("run", "--format", "json", "-o", "run.json", "--html", "timeline.html", *args, cwd=tmp_path)
    conns = json.loads((tmp_path / "run.json").read_text())["connections"]
    # what each peer counted, the other way round, is what the program sent and read
    counted = sorted((p["tx"], p["rx"]) for p in plain.wait_closed(1) + secure.wait_closed(1))
    assert sorted((c["rx"], c["tx"]) for c in conns) == counted
    kept, tls = sorted(conns, key=lambda c: c["tls"] is not None)
    assert tls["tls"] and tls["tls_time"] is not None and not kept["tls"]

    page, errors, blocked = open_page(browser, tmp_path / "timeline.html")
    assert sorted(conn_ids(page)) == sorted(c["id"] for c in conns)
    assert len(seg_boxes(page, tls["id"], "tls")) == 1
    assert len(kept["exchanges"]) == 2 and len(tls["exchanges"]) == 1  # the requests made
    assert len(seg_boxes(page, kept["id"], "waiting")) == len(seg_boxes(page, kept["id"], "transfer")) == 2
    assert cells_of(page, kept["id"])["peer"] == f"localhost:{plain.port}"
    page.set_viewport_size({"width": 1200, "height": 480})
    tip = tip_of(page, f".row.conn[data-id='{tls['id']}'] .bar")
    assert f"peer      localhost:{secure.port}" in tip
    folder = Path(os.environ.get("NETSTATS_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "timeline.png"))
    print(f"screenshot: {folder / 'timeline.png'}")
    assert errors == [] and blocked == []
    page.close()


def test_exchanges_and_marks_a_saved_run_garbles_are_left_out_not_raised(tmp_path: Path) -> None:
    """A saved run is data: marks that are not what netstats writes (text, infinite or far
    times, the wrong shape) are left off the clock, and exchanges out of order or before the
    connection opened are drawn inside its life, never across each other."""
    garbage = [[101.5, None, None], [100.5, 100.6, 100.7], [101.2, 101.1, 101.15], [101.3, 101.4, 101.35]]
    marks = [
        {"name": 5, "time": float("inf")},
        "text",
        {"name": "late", "time": 1e9, "rx": "many"},
        {"time": 101.5},
    ]
    record = conn(1, 101.0, 102.0, exchanges=garbage, marks=marks)
    save(tmp_path, [record])
    page = (tmp_path / "page.html").read_text()
    data = re.search(r'<script type="application/json" id="netstats-data">(.*?)</script>', page, re.S)
    assert data is not None
    row = json.loads(data.group(1))["connections"][0]
    assert all(0 <= s[1] <= s[2] <= 1.0 for s in row["segs"])  # within its second of life
    assert all(a[2] <= b[1] for a, b in zip(row["segs"], row["segs"][1:], strict=False))
    assert [m["time"] for m in row["marks"]] == [None, None, 0.5]  # (placed only where it was open)
    events = trace_of(tmp_path)
    assert [e["ts"] for e in events if e["ph"] == "i"] == [1_500_000]
    assert all(e["ts"] >= 1_000_000 and e["ts"] + e["dur"] <= 2_000_000 for e in events if e["ph"] == "X")
