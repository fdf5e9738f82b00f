"""The command line, run for real in a subprocess: `netstats run`, `report`, `demo`.

Each test writes a small program into tmp_path that makes known traffic to peers the test
started (127.0.0.1 only), runs it under `python -m netstats`, and checks what netstats printed
or saved against the peers' own counts.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

TIMEOUT = 60

# Shared by the programs below: talk to an echo peer, n bytes each way, on one connection.
TALK = """\
import socket


def talk(port, n, host="127.0.0.1"):
    if host == "127.0.0.1":
        s = socket.create_connection((host, port))
    else:  # a name, resolved to IPv4 only: no refused attempt on ::1
        info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
        family, kind, proto, _, address = info[0]
        s = socket.socket(family, kind, proto)
        s.connect(address)
    with s:
        s.sendall(b"x" * n)
        got = 0
        while got < n:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("the echo peer closed early")
            got += len(chunk)
"""


def netstats(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m netstats ARGS` in cwd, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "netstats", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def program(folder: Path, name: str, source: str, talk: bool = True) -> Path:
    """Write a program (with the `talk` helper on top unless told otherwise) into folder."""
    path = folder / name
    path.write_text((TALK + "\n\n" if talk else "") + textwrap.dedent(source), encoding="utf-8")
    return path


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def by_port(run: dict[str, Any], port: int) -> list[dict[str, Any]]:
    """The run's connections to 127.0.0.1:port, in the order they were opened."""
    conns = [c for c in run["connections"] if c["remote"] == ["127.0.0.1", port]]
    return sorted(conns, key=lambda c: c["opened"])


def cells(line: str) -> list[str]:
    """The cells of a row of a text table (columns are two or more spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def totals_row(text: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if cells(line)[0] == "total"]
    return cells(line)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


# ---- netstats run script.py: as python would run it ----------------------------------------


def test_run_gives_the_script_its_arguments_and_main_name_and_leaves_stdout_to_it(tmp_path):
    program(
        tmp_path,
        "show.py",
        """\
        import json, sys
        print(json.dumps({"argv": sys.argv, "name": __name__}))
        """,
        talk=False,
    )
    # Options after the script are the script's, even those netstats itself knows.
    args = ["a b", "--format", "json", "-o", "out.json", "--by", "pid", "-m", "x", "--help"]
    result = netstats("run", "show.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"argv": ["show.py", *args], "name": "__main__"}
    assert result.stdout.count("\n") == 1  # the script's line, and nothing of netstats
    assert result.stderr.startswith("netstats: 0 connections")  # the report is on stderr
    assert not (tmp_path / "out.json").exists()


def test_run_passes_stdin_through_to_the_script(tmp_path):
    program(tmp_path, "cat.py", "import sys\nsys.stdout.write(sys.stdin.read())\n", talk=False)
    text = "first line\nsecond line, with ünïcödé\n" * 100
    result = netstats("run", "cat.py", cwd=tmp_path, stdin=text)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text


def test_run_keeps_the_scripts_exit_code_and_still_reports_its_traffic(tmp_path, peer):
    echo = peer("echo")
    program(tmp_path, "three.py", "import sys\ntalk(int(sys.argv[1]), 1234)\nsys.exit(3)\n")
    report = tmp_path / "run.json"
    result = netstats("run", "-o", str(report), "--format", "json", "three.py", str(echo.port), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    rx, tx = echo.totals(1)
    run = load(report)
    assert run["exit_code"] == 3
    (conn,) = run["connections"]
    assert (conn["tx"], conn["rx"]) == (rx, tx) == (1234, 1234)


def test_run_exits_0_when_the_script_calls_sys_exit_without_a_code(tmp_path):
    program(tmp_path, "zero.py", "import sys\nsys.exit()\n", talk=False)
    result = netstats("run", "zero.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_run_prints_a_sys_exit_message_on_stderr_and_exits_1(tmp_path):
    program(tmp_path, "message.py", "import sys\nsys.exit('giving up: no config')\n", talk=False)
    result = netstats("run", "message.py", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == "giving up: no config"
    assert "netstats: 0 connections" in result.stderr


def test_a_script_that_raises_gets_its_traceback_its_report_and_exit_code_1(tmp_path, peer):
    echo = peer("echo")
    program(
        tmp_path,
        "boom.py",
        """\
        import sys


        def fail():
            raise RuntimeError("boom after talking")


        talk(int(sys.argv[1]), 700)
        fail()
        """,
    )
    result = netstats("run", "boom.py", str(echo.port), cwd=tmp_path)
    assert result.returncode == 1
    assert echo.totals(1) == (700, 700)
    err = result.stderr
    assert "Traceback (most recent call last):" in err
    assert "RuntimeError: boom after talking" in err
    # As python prints it: the script's frames, none of netstats' or runpy's.
    frames = re.findall(r'^  File "([^"]+)", line \d+, in (\S+)$', err, re.MULTILINE)
    assert [(Path(f).name, fn) for f, fn in frames] == [("boom.py", "<module>"), ("boom.py", "fail")]
    # The report follows the traceback.
    summary = err[err.index("RuntimeError: boom after talking") :].splitlines()[1]
    assert summary.startswith("netstats: 1 connection, tx 700 B, rx 700 B")
    assert summary.endswith("exit code 1")
    assert str(echo.port) in err


def test_run_of_a_missing_script_says_so_in_one_line_and_exits_2(tmp_path):
    result = netstats("run", "missing.py", "arg", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "missing.py" in line
    assert "no such file" in line.lower()


# ---- netstats run -m module --------------------------------------------------------------


def test_run_m_runs_a_module_from_the_current_directory_as_main(tmp_path, peer):
    echo = peer("echo")
    program(
        tmp_path,
        "talker.py",
        """\
        import json, os, sys

        if __name__ == "__main__":
            talk(int(sys.argv[1]), int(sys.argv[2]))
            print(json.dumps({"argv": sys.argv, "name": __name__, "pid": os.getpid()}))
        """,
    )
    report = tmp_path / "run.json"
    result = netstats(
        "run", "--format", "json", "-o", str(report), "-m", "talker", str(echo.port), "3000", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["name"] == "__main__"
    assert Path(seen["argv"][0]).name == "talker.py"  # python -m sets the module's path
    assert seen["argv"][1:] == [str(echo.port), "3000"]
    rx, tx = echo.totals(1)
    run = load(report)
    assert run["program"] == ["-m", "talker", str(echo.port), "3000"]
    assert run["pid"] == seen["pid"]
    (conn,) = run["connections"]
    assert (conn["pid"], conn["tx"], conn["rx"]) == (seen["pid"], rx, tx) == (seen["pid"], 3000, 3000)


def test_run_m_of_a_missing_module_says_so_in_one_line_and_exits_1_as_python_does(tmp_path):
    result = netstats("run", "-m", "no_such_module_here", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "No module named no_such_module_here" in one_line(result.stderr)


# ---- reports: JSON and text ----------------------------------------------------------------


def test_run_saves_a_json_report_whose_figures_are_the_peers_counts(tmp_path, peer):
    echo, http = peer("echo"), peer("http")
    program(
        tmp_path,
        "fetch.py",
        """\
        import os, sys, urllib.request

        echo_port, http_port = int(sys.argv[1]), int(sys.argv[2])
        talk(echo_port, 100_000)
        body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/bytes/5000", timeout=10).read()
        assert len(body) == 5000
        print(os.getpid())
        """,
    )
    report = tmp_path / "run.json"
    result = netstats(
        "run", "-o", str(report), "--format", "json", "fetch.py", str(echo.port), str(http.port), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the report went to the file
    pid = int(result.stdout)
    run = load(report)
    assert run["schema"] == "netstats.run/1"
    assert run["program"] == ["fetch.py", str(echo.port), str(http.port)]
    assert run["pid"] == pid
    assert run["exit_code"] == 0
    assert run["started"] <= run["finished"]
    assert len(run["connections"]) == 2
    for p in (echo, http):
        rx, tx = p.totals(1)
        (conn,) = by_port(run, p.port)
        assert (conn["pid"], conn["transport"], conn["tx"], conn["rx"]) == (pid, "tcp", rx, tx)
    assert by_port(run, echo.port)[0]["tx"] == 100_000
    assert by_port(run, http.port)[0]["rx"] > 5000


def test_the_text_report_shows_each_connection_and_the_totals_on_stderr(tmp_path, peer):
    http = peer("http")
    program(
        tmp_path,
        "get.py",
        """\
        import http.client, os, sys

        client = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
        client.request("GET", "/bytes/700", headers={"Connection": "close"})
        assert len(client.getresponse().read()) == 700
        client.close()
        print(os.getpid())
        """,
        talk=False,
    )
    result = netstats("run", "get.py", str(http.port), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout)
    rx, tx = http.totals(1)  # the peer read the request (tx) and wrote the response (rx)
    assert tx < 1024 and rx < 1024 and tx != rx  # shown exactly, as "N B"
    text = result.stderr
    assert text.splitlines()[0].startswith(f"netstats: 1 connection, tx {rx} B, rx {tx} B, ")
    (row,) = [line for line in text.splitlines() if f"127.0.0.1:{http.port}" in line]
    assert cells(row)[:2] == [str(pid), "tcp"]
    assert f"{rx} B" in cells(row) and f"{tx} B" in cells(row)
    assert totals_row(text)[:4] == ["total", "1 conn.", f"{rx} B", f"{tx} B"]


# ---- child processes -----------------------------------------------------------------------


def test_children_are_reported_with_their_own_pids_and_the_peers_counts(tmp_path, peer):
    echo = peer("echo")
    program(
        tmp_path,
        "family.py",
        """\
        import json, multiprocessing, os, subprocess, sys

        CHILD = (
            "import sys; sys.path.insert(0, sys.argv[1]); from family import talk; "
            "talk(*map(int, sys.argv[2:]))"
        )

        if __name__ == "__main__":
            port = int(sys.argv[1])
            pids = {"parent": os.getpid()}
            talk(port, 100)
            here = os.path.dirname(os.path.abspath(__file__))
            child = subprocess.Popen([sys.executable, "-c", CHILD, here, str(port), "200"])
            assert child.wait(30) == 0
            pids["subprocess"] = child.pid
            for method, size in (("fork", 300), ("spawn", 400)):
                process = multiprocessing.get_context(method).Process(target=talk, args=(port, size))
                process.start()
                process.join(30)
                assert process.exitcode == 0, (method, process.exitcode)
                pids[method] = process.pid
            print(json.dumps(pids))
        """,
    )
    report = tmp_path / "run.json"
    result = netstats("run", "--format", "json", "-o", str(report), "family.py", str(echo.port), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pids = json.loads(result.stdout)
    assert len(set(pids.values())) == 4
    counts = echo.wait_closed(4)  # in the order the processes talked: 100, 200, 300, 400 bytes
    run = load(report)
    assert run["pid"] == pids["parent"]
    conns = by_port(run, echo.port)
    assert len(conns) == 4, conns
    for who, record in zip(("parent", "subprocess", "fork", "spawn"), counts, strict=True):
        (conn,) = [c for c in conns if c["pid"] == pids[who]]
        assert (conn["tx"], conn["rx"]) == (record["rx"], record["tx"]), who
    assert [record["rx"] for record in counts] == [100, 200, 300, 400]


# ---- groupings and CSV ----------------------------------------------------------------------


@pytest.fixture
def two_processes(tmp_path, peer):
    """A program whose process talks to 127.0.0.1 (1000 bytes) and whose child to "localhost"
    (2000 bytes), both to the same echo peer. Returns run(*options) -> (result, expected), where
    expected gives the peer's (rx, tx) for "parent" and "child", and the pids."""
    echo = peer("echo")
    program(
        tmp_path,
        "two.py",
        """\
        import json, os, subprocess, sys

        CHILD = (
            "import sys; sys.path.insert(0, sys.argv[1]); from two import talk; "
            "talk(int(sys.argv[2]), 2000, 'localhost')"
        )

        if __name__ == "__main__":
            port = int(sys.argv[1])
            talk(port, 1000)
            here = os.path.dirname(os.path.abspath(__file__))
            child = subprocess.Popen([sys.executable, "-c", CHILD, here, str(port)])
            assert child.wait(30) == 0
            print(json.dumps({"parent": os.getpid(), "child": child.pid}))
        """,
    )
    runs = 0

    def run(*options: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        nonlocal runs
        result = netstats("run", *options, "two.py", str(echo.port), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        runs += 1
        records = echo.wait_closed(2 * runs)[-2:]
        assert [r["rx"] for r in records] == [1000, 2000]
        return result, {
            "port": echo.port,
            "pids": json.loads(result.stdout),
            "parent": (records[0]["rx"], records[0]["tx"]),
            "child": (records[1]["rx"], records[1]["tx"]),
        }

    return run


def test_csv_has_one_parsable_row_per_connection(two_processes):
    result, expected = two_processes("--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stderr)))
    assert len(rows) == 2
    got = {int(row["pid"]): (int(row["tx"]), int(row["rx"]), row["host"]) for row in rows}
    pids = expected["pids"]
    assert got == {
        pids["parent"]: (*expected["parent"], ""),
        pids["child"]: (*expected["child"], "localhost"),
    }


def test_csv_by_host_has_one_row_per_host_with_its_totals(two_processes):
    result, expected = two_processes("--format", "csv", "--by", "host")
    rows = list(csv.DictReader(io.StringIO(result.stderr)))
    assert len(rows) == 2
    got = {row["host"]: (int(row["connections"]), int(row["tx"]), int(row["rx"])) for row in rows}
    assert got == {
        f"127.0.0.1:{expected['port']}": (1, *expected["parent"]),
        "localhost": (1, *expected["child"]),
    }


def test_csv_by_pid_has_one_row_per_process_with_its_totals(two_processes):
    result, expected = two_processes("--format", "csv", "--by", "pid")
    rows = list(csv.DictReader(io.StringIO(result.stderr)))
    assert len(rows) == 2
    got = {int(row["pid"]): (int(row["connections"]), int(row["tx"]), int(row["rx"])) for row in rows}
    pids = expected["pids"]
    assert got == {pids["parent"]: (1, *expected["parent"]), pids["child"]: (1, *expected["child"])}


def test_text_by_host_has_a_row_per_host_with_its_sizes(two_processes):
    result, expected = two_processes("--by", "host")
    lines = result.stderr.splitlines()
    assert lines[0].startswith("netstats: 2 connections, ")
    assert "2 processes" in lines[0]
    assert cells(lines[2])[:4] == ["HOST", "CONNS", "TX", "RX"]
    rows = {cells(line)[0]: cells(line)[1:4] for line in lines[3:]}
    (ptx, prx), (ctx, crx) = expected["parent"], expected["child"]
    assert rows == {
        f"127.0.0.1:{expected['port']}": ["1", f"{ptx} B", f"{prx} B"],
        "localhost": ["1", f"{ctx / 1024:.1f} KiB", f"{crx / 1024:.1f} KiB"],
    }


def test_text_by_pid_has_a_row_per_process(two_processes):
    result, expected = two_processes("--by", "pid")
    lines = result.stderr.splitlines()
    assert cells(lines[2])[:2] == ["PID", "CONNS"]
    rows = {cells(line)[0]: cells(line)[1] for line in lines[3:]}
    pids = expected["pids"]
    assert rows == {str(pids["parent"]): "1", str(pids["child"]): "1"}


# ---- netstats report: re-rendering a saved run ----------------------------------------------


def test_report_re_renders_a_saved_run_by_host(two_processes, tmp_path):
    report = tmp_path / "saved.json"
    _, expected = two_processes("--format", "json", "-o", str(report))
    result = netstats("report", str(report), "--by", "host", "--format", "text", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    lines = text.splitlines()
    assert lines[0].startswith("netstats: 2 connections, ")
    rows = {cells(line)[0]: cells(line)[1:4] for line in lines[3:]}
    (ptx, prx), (ctx, crx) = expected["parent"], expected["child"]
    assert rows == {
        f"127.0.0.1:{expected['port']}": ["1", f"{ptx} B", f"{prx} B"],
        "localhost": ["1", f"{ctx / 1024:.1f} KiB", f"{crx / 1024:.1f} KiB"],
    }


def test_report_as_json_gives_back_the_saved_run(tmp_path, peer):
    echo = peer("echo")
    program(tmp_path, "once.py", "import sys\ntalk(int(sys.argv[1]), 4321)\n")
    saved = tmp_path / "saved.json"
    result = netstats("run", "--format", "json", "-o", str(saved), "once.py", str(echo.port), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    again = tmp_path / "again.json"
    result = netstats("report", str(saved), "--format", "json", "-o", str(again), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load(again) == load(saved)
    (conn,) = load(again)["connections"]
    assert (conn["tx"], conn["rx"]) == echo.totals(1)[::-1]


@pytest.mark.parametrize(
    "content",
    [
        '{"hello": "world"}',
        '{"schema": "netstats.run/999", "connections": []}',
        "[1, 2, 3]",
        "not json at all",
        "",
    ],
    ids=["other-json", "other-schema", "json-list", "text", "empty"],
)
def test_report_of_a_file_that_is_not_a_run_says_so_in_one_line_and_exits_2(tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content, encoding="utf-8")
    result = netstats("report", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "other.json" in one_line(result.stderr)


def test_report_of_a_missing_file_says_so_in_one_line_and_exits_2(tmp_path):
    result = netstats("report", "nowhere.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere.json" in one_line(result.stderr)


# ---- usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["run", "--bogus"], ["frobnicate"], ["run"], ["run", "--format", "xml", "x.py"], ["report"]],
    ids=["unknown-option", "unknown-command", "run-nothing", "unknown-format", "report-nothing"],
)
def test_bad_usage_prints_one_line_on_stderr_and_exits_2(tmp_path, args):
    result = netstats(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result.stderr).startswith("netstats")


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]], ids=["netstats", "run"])
def test_help_is_short_and_has_examples(tmp_path, args):
    result = netstats(*args, cwd=tmp_path)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) < 40
    assert "example" in result.stdout


def test_the_console_script_is_installed_next_to_python(tmp_path):
    script = Path(sys.executable).with_name("netstats")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0
    assert "netstats run" in result.stdout


# ---- netstats demo -------------------------------------------------------------------------


def test_demo_runs_offline_in_seconds_and_shows_tls_marks_and_totals(tmp_path):
    started = time.monotonic()
    result = netstats("demo", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 10
    out = result.stdout
    assert "TLSv1.3" in out
    assert "mark" in out
    assert re.search(r"^netstats: \d+ connections, tx \d+ B, rx [\d.]+ KiB", out, re.MULTILINE)
    total = totals_row(out)
    assert total[0] == "total" and re.fullmatch(r"\d+ conn\.", total[1])
