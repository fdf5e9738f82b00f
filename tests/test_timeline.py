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


@settings(max_examples=300, deadline=None)
@given(
    start=st.floats(1.7e9, 1.8e9),
    times=st.lists(st.floats(0, 5), min_size=5, max_size=5),
)
def test_trace_phases_of_a_connection_never_partly_overlap(start: float, times: list[float]) -> None:
    """Perfetto rejects slices of one track that partly overlap: however the phases' times
    round, one phase ends at or before the next begins (the page and text are not involved)."""
    from netstats._report import Run, render

    dns, connect, wait, ttfb, rest = times
    opened = start + dns
    conn = {
        "id": 1, "pid": 7, "transport": "tcp", "side": "client", "remote": ["127.0.0.1", 80],
        "opened": opened, "dns_time": dns, "connect_time": connect,
        "first_write": opened + connect + wait, "ttfb": ttfb,
        "closed": opened + connect + wait + ttfb + rest,
    }  # fmt: skip
    run = Run(
        program=["p.py"], pid=7, started=start, finished=conn["closed"] + 1, exit_code=0, connections=[conn]
    )
    slices = sorted(
        (e["ts"], e["dur"]) for e in json.loads(render(run, "trace"))["traceEvents"] if e["ph"] == "X"
    )
    for (ts, dur), (next_ts, next_dur) in zip(slices, slices[1:], strict=False):
        assert ts + dur <= next_ts or next_ts + next_dur <= ts + dur, (ts, dur, next_ts, next_dur)
