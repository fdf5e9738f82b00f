"""The command line, run for real in a subprocess: `netstats run`, `report`, `demo`.

Each test writes a small program into tmp_path that makes known traffic to peers the test
started (127.0.0.1 only), runs it under `python -m netstats`, and checks what netstats printed
or saved against the peers' own counts.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstats.__main__ import MACHINE_FILES, main
from netstats._report import GROUPS, SORTS
from netstats._version import __version__ as netstats_version

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


def table_rows(text: str) -> list[list[str]]:
    """The rows of a text report's table (their cells): between the header and the total."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("netstats: ")) + 1
    start = next(i for i in range(start, len(lines)) if lines[i].strip() == "") + 2  # after the header
    rows = []
    for line in lines[start:]:
        if cells(line)[0] == "total" or line.startswith(("...", "(")):
            break
        rows.append(cells(line))
    return rows


def table(text: str) -> dict[str, list[str]]:
    """The rows of a text report's table by their first cell."""
    return {row[0]: row[1:] for row in table_rows(text)}


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
    assert result.stderr == f"netstats: wrote the report to {report}\n"  # the report went there, said once
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


def test_children_ended_by_sigterm_are_reported_too(tmp_path, peer):
    echo = peer("echo")
    program(
        tmp_path,
        "workers.py",
        """\
        import json, multiprocessing, sys, time


        def work(port, n, done):
            talk(port, n)
            done.set()
            time.sleep(60)  # until terminated


        if __name__ == "__main__":
            port = int(sys.argv[1])
            pids = {}
            for method, n in (("fork", 300), ("spawn", 400)):
                context = multiprocessing.get_context(method)
                done = context.Event()
                process = context.Process(target=work, args=(port, n, done))
                process.start()
                assert done.wait(30), method
                process.terminate()  # SIGTERM
                process.join(30)
                assert process.exitcode == -15, (method, process.exitcode)  # killed by it, as ever
                pids[method] = process.pid
            print(json.dumps(pids))
        """,
    )
    report = tmp_path / "run.json"
    result = netstats(
        "run", "--format", "json", "-o", str(report), "workers.py", str(echo.port), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    pids = json.loads(result.stdout)
    counts = echo.wait_closed(2)
    conns = by_port(load(report), echo.port)
    assert [(c["pid"], c["tx"], c["rx"]) for c in conns] == [
        (pids["fork"], counts[0]["rx"], counts[0]["tx"]),
        (pids["spawn"], counts[1]["rx"], counts[1]["tx"]),
    ]
    assert [record["rx"] for record in counts] == [300, 400]


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
            "report": machine_report(tmp_path, list(options), result.stderr.encode()).decode(),
        }

    return run


def test_csv_has_one_parsable_row_per_connection(two_processes):
    result, expected = two_processes("--format", "csv")
    rows = list(csv.DictReader(io.StringIO(expected["report"])))
    assert len(rows) == 2
    got = {int(row["pid"]): (int(row["tx"]), int(row["rx"]), row["host"]) for row in rows}
    pids = expected["pids"]
    assert got == {
        pids["parent"]: (*expected["parent"], ""),
        pids["child"]: (*expected["child"], "localhost"),
    }


def test_csv_by_host_has_one_row_per_host_with_its_totals(two_processes):
    result, expected = two_processes("--format", "csv", "--by", "host")
    rows = list(csv.DictReader(io.StringIO(expected["report"])))
    assert len(rows) == 2
    got = {row["host"]: (int(row["connections"]), int(row["tx"]), int(row["rx"])) for row in rows}
    assert got == {
        f"127.0.0.1:{expected['port']}": (1, *expected["parent"]),
        f"localhost:{expected['port']}": (1, *expected["child"]),  # host and port, as for every row
    }


def test_csv_by_pid_has_one_row_per_process_with_its_totals(two_processes):
    result, expected = two_processes("--format", "csv", "--by", "pid")
    rows = list(csv.DictReader(io.StringIO(expected["report"])))
    assert len(rows) == 2
    got = {int(row["pid"]): (int(row["connections"]), int(row["tx"]), int(row["rx"])) for row in rows}
    pids = expected["pids"]
    assert got == {pids["parent"]: (1, *expected["parent"]), pids["child"]: (1, *expected["child"])}


def test_text_by_host_has_a_row_per_host_with_its_sizes(two_processes):
    result, expected = two_processes("--by", "host")
    lines = result.stderr.splitlines()
    assert lines[0].startswith("netstats: 2 connections, ")
    assert "2 processes" in lines[0]
    assert cells(lines[2]) == ["HOST", "CONNS", "TX", "RX", "WIRE TX", "WIRE RX", "TLS+", "TIME"]
    rows = {host: row[:3] for host, row in table(result.stderr).items()}
    (ptx, prx), (ctx, crx) = expected["parent"], expected["child"]
    assert rows == {
        f"127.0.0.1:{expected['port']}": ["1", f"{ptx} B", f"{prx} B"],
        f"localhost:{expected['port']}": ["1", f"{ctx / 1024:.1f} KiB", f"{crx / 1024:.1f} KiB"],
    }
    assert totals_row(result.stderr)[:4] == [
        "total",
        "2",
        f"{(ptx + ctx) / 1024:.1f} KiB",
        f"{(prx + crx) / 1024:.1f} KiB",
    ]


def test_text_by_pid_has_a_row_per_process(two_processes):
    result, expected = two_processes("--by", "pid")
    lines = result.stderr.splitlines()
    assert cells(lines[2])[:2] == ["PID", "CONNS"]
    rows = {pid: row[0] for pid, row in table(result.stderr).items()}
    pids = expected["pids"]
    assert rows == {str(pids["parent"]): "1", str(pids["child"]): "1"}


# ---- netstats report: re-rendering a saved run ----------------------------------------------


def test_report_re_renders_a_saved_run_by_host(two_processes, tmp_path):
    report = tmp_path / "saved.json"
    _, expected = two_processes("--format", "json", "-o", str(report))
    result = netstats("report", str(report), "--by", "host", "--format", "text", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert result.stdout and not result.stderr  # `report` writes to stdout
    assert text.startswith("netstats: 2 connections, ")
    rows = {host: row[:3] for host, row in table(text).items()}
    (ptx, prx), (ctx, crx) = expected["parent"], expected["child"]
    assert rows == {
        f"127.0.0.1:{expected['port']}": ["1", f"{ptx} B", f"{prx} B"],
        f"localhost:{expected['port']}": ["1", f"{ctx / 1024:.1f} KiB", f"{crx / 1024:.1f} KiB"],
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


@pytest.mark.parametrize("command", ["run", "report"])
def test_an_output_file_that_cannot_be_written_is_one_line_before_anything_runs(tmp_path, command):
    program(tmp_path, "mark.py", "open('ran.txt', 'w').close()\n", talk=False)
    saved = saved_run(tmp_path, [conn_record(1, tx=1, rx=1, duration=0.1)])
    target = ["mark.py"] if command == "run" else [str(saved)]
    result = netstats(command, "-o", "nowhere/report.txt", *target, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert (
        line.startswith(f"netstats {command}: ")
        and "cannot write nowhere/report.txt: no such directory" in line
    )
    assert not (tmp_path / "ran.txt").exists()


def test_the_report_goes_where_o_said_even_if_the_program_changes_directory(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    program(tmp_path, "move.py", "import os\nos.chdir('elsewhere')\n", talk=False)
    result = netstats("run", "-o", "report.txt", "move.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.txt").read_text().startswith("netstats: 0 connections")
    assert not (tmp_path / "elsewhere" / "report.txt").exists()


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
    # each step's bytes, by its tag: two 28,000-byte bodies by urllib, one by asyncio
    steps = dict(re.findall(r"^   (urllib|asyncio) +tx [\d.]+ B, rx ([\d.]+ KiB)$", out, re.MULTILINE))
    assert steps == {"urllib": "55.0 KiB", "asyncio": "27.5 KiB"}, out
    assert re.search(r"^netstats: \d+ connections, tx \d+ B, rx [\d.]+ KiB", out, re.MULTILINE)
    total = totals_row(out)
    assert total[0] == "total" and re.fullmatch(r"\d+ conn\.", total[1])


# ---- as python runs programs: paths, folders, the console script ----------------------------

SCRIPT = Path(sys.executable).with_name("netstats")  # the console script, as users run it


def console(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


def test_run_m_finds_a_module_in_the_current_directory_from_the_console_script(tmp_path):
    program(tmp_path, "mymod.py", "import os\nprint(__name__, os.path.basename(__file__))\n", talk=False)
    python = subprocess.run([sys.executable, "-m", "mymod"], cwd=tmp_path, capture_output=True, text=True)
    result = console("run", "-m", "mymod", cwd=tmp_path)
    assert result.returncode == python.returncode == 0, result.stderr
    assert result.stdout == python.stdout == "__main__ mymod.py\n"


def test_run_gives_an_absolute_file_and_argv0_as_given_as_python_does(tmp_path):
    program(tmp_path, "info.py", "import json, sys\nprint(json.dumps([__file__, sys.argv[0]]))\n", talk=False)
    python = subprocess.run([sys.executable, "info.py"], cwd=tmp_path, capture_output=True, text=True)
    result = netstats("run", "info.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(python.stdout)
    file, argv0 = json.loads(result.stdout)
    assert Path(file).is_absolute() and Path(file).name == "info.py" and argv0 == "info.py"


def test_run_of_a_folder_runs_its_main_or_says_in_one_line_that_it_has_none(tmp_path):
    (tmp_path / "app").mkdir()
    result = netstats("run", "app", cwd=tmp_path)
    python = subprocess.run([sys.executable, "app"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == python.returncode == 1
    line = one_line(result.stderr)
    assert "can't find '__main__' module" in line and "app" in line
    (tmp_path / "app" / "__main__.py").write_text("print('app ran', __name__)\n", encoding="utf-8")
    result = netstats("run", "app", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "app ran __main__\n"), result.stderr


# ---- a server run under netstats, ended by SIGTERM ------------------------------------------


class Served:
    """`netstats run [--servers] -m http.server` on 127.0.0.1, serving a file of known size."""

    def __init__(self, folder: Path, *options: str) -> None:
        (folder / "file.bin").write_bytes(b"f" * 5000)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        args = [*options, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)]
        self.process = subprocess.Popen(
            [str(SCRIPT), "run", *args],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.process.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        first = lines.get(timeout=TIMEOUT)  # "Serving HTTP on 127.0.0.1 port N (...) ..."
        found = re.search(r" port (\d+) ", first)
        assert found, f"http.server did not start: {first!r}"
        self.port = int(found.group(1))

    def fetch(self) -> tuple[int, int]:
        """GET the file; (bytes sent, bytes received) as this client counted them."""
        request = b"GET /file.bin HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        received = 0
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
            s.sendall(request)
            while chunk := s.recv(65536):
                received += len(chunk)
        assert received > 5000
        return len(request), received

    def terminate(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, err


@pytest.fixture
def serve(tmp_path):
    """Served(tmp_path, *options); whatever a failed test left running is killed."""
    started: list[Served] = []

    def start(*options: str) -> Served:
        started.append(Served(tmp_path, *options))
        return started[-1]

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.communicate(timeout=TIMEOUT)


def test_sigterm_writes_the_report_then_ends_the_run_as_killed_by_sigterm(tmp_path, serve):
    served = serve("--servers", "--format", "json", "-o", str(tmp_path / "run.json"))
    sent, received = served.fetch()
    code, err = served.terminate()
    assert code == -signal.SIGTERM, err  # killed by the signal, as python would have been
    run = load(tmp_path / "run.json")
    (conn,) = [c for c in run["connections"] if c["side"] == "server"]
    assert (conn["rx"], conn["tx"]) == (sent, received)
    # Where it was accepted: the program's own module (http.server run as __main__), never
    # netstats' launcher (the console script).
    for where in (conn["origin"], conn["caller"]):
        assert Path(where.split(":")[0]).parts[-2:] == ("http", "server.py"), where
    # Grouped by host, accepted connections go by the address that accepted them.
    by_host = netstats("report", str(tmp_path / "run.json"), "--by", "host", cwd=tmp_path).stdout
    assert table(by_host)[f"127.0.0.1:{served.port} (in)"][:3] == [
        "1",
        f"{received / 1024:.1f} KiB",
        f"{sent} B",
    ]


def test_without_servers_the_report_says_accepted_connections_were_left_out(serve):
    served = serve()
    served.fetch()
    served.fetch()
    code, err = served.terminate()
    assert code == -signal.SIGTERM
    report = err[err.index("netstats: 0 connections") :].splitlines()
    assert report[1] == (
        "netstats: the program accepted 2 connections, left out of this report "
        "(netstats run --servers reports them)"
    )


def test_the_demo_from_the_console_script_shows_where_it_connected_not_the_launcher(tmp_path):
    result = console("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bin" + os.sep + "netstats" not in result.stdout
    rows = table_rows(result.stdout)
    assert len(rows) == 3
    for row in rows:
        assert re.fullmatch(r"\S*_demo\.py:\d+ in (run|_fetch_async)", row[-1]), row
    assert not re.search(r"\d\.\d{4,}", result.stdout)  # no figure with 17 digits


# ---- the text layout: 120 columns, --top, --sort, --wide; unknown figures ------------------


def saved_run(folder: Path, connections: list[dict[str, Any]], **fields: Any) -> Path:
    """A run file as `netstats run --format json` writes it, with the connections given."""
    base = {"local": ["127.0.0.1", 40000], "side": "client", "tls": None, "host": None, "marks": []}
    base |= {"wire_tx": None, "wire_rx": None, "error": None, "opened": 1.0, "closed": 2.0}
    last = max([3.5, *(c["closed"] for c in connections if c.get("closed"))])
    doc = {"schema": "netstats.run/1", "program": ["app.py"], "pid": 10, "started": 1.0, "finished": last}
    doc |= {"exit_code": 0, **fields, "connections": [{**base, **c} for c in connections]}
    path = folder / "saved.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def conn_record(i: int, tx: int | None, rx: int | None, duration: float, **more: Any) -> dict[str, Any]:
    deep = "/home/someone/projects/a-rather-long-project-name/src/package/subpackage/module"
    return {
        "id": i, "pid": 10, "transport": "tcp", "remote": ["127.0.0.1", 8000 + i], "tx": tx, "rx": rx,
        "duration": duration, "opened": 1.0, "closed": 1.0 + duration,
        "caller": f"{deep}/client_{i}.py:{i} in fetch_everything_from_the_server",
        "origin": f"{deep}/../../../venv/lib/site-packages/urllib3/connection.py:{i} in connect", **more,
    }  # fmt: skip


def test_the_text_report_fits_120_columns_with_top_and_sort(tmp_path):
    conns = [conn_record(i, tx=100 * i, rx=50_000 - 1000 * i, duration=i / 10) for i in range(1, 41)]
    path = saved_run(tmp_path, conns)
    result = netstats("report", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 120
    assert len(table_rows(result.stdout)) == 20  # a summary: the busiest 20, and how many more
    assert "... 20 more connections (--top 0 shows all)" in result.stdout
    every = netstats("report", str(path), "--top", "0", cwd=tmp_path).stdout
    assert len(table_rows(every)) == 40 and "more connection" not in every
    assert cells(result.stdout.splitlines()[2])[:8] == [
        "PID",
        "PROTO",
        "PEER",
        "TX",
        "RX",
        "TLS+",
        "TIME",
        "CALLER",
    ]
    assert table_rows(result.stdout)[0][2] == "127.0.0.1:8001"  # tx + rx largest first

    top = netstats("report", str(path), "--top", "3", "--sort", "time", cwd=tmp_path).stdout
    assert [row[2] for row in table_rows(top)] == ["127.0.0.1:8040", "127.0.0.1:8039", "127.0.0.1:8038"]
    assert "... 37 more connections (--top 3: --top 0 shows all)" in top
    tx_total = sum(100 * i for i in range(1, 41))
    assert totals_row(top)[:3] == ["total", "40 conn.", f"{tx_total / 1024:.1f} KiB"]  # all 40

    by_tx = netstats("report", str(path), "--top", "1", "--sort", "tx", cwd=tmp_path).stdout
    assert table_rows(by_tx)[0][3] == "3.9 KiB"  # 4000 bytes, the largest tx
    wide = netstats("report", str(path), "--wide", "--top", "0", cwd=tmp_path).stdout
    header = [
        "PID",
        "PROTO",
        "PEER",
        "REMOTE",
        "TX",
        "RX",
        "WIRE TX",
        "WIRE RX",
        "TLS+",
        "TIME",
        "DNS",
        "CONNECT",
        "TLS",
        "TTFB",
        "CALLER",
        "ORIGIN",
    ]
    assert cells(wide.splitlines()[2]) == header
    (row,) = [row for row in table_rows(wide) if row[2] == "127.0.0.1:8040"]
    assert row[-2:] == [conns[-1]["caller"], "urllib3/connection.py:40 in connect"]  # whole, origin shown


def test_a_groups_time_is_the_time_one_of_its_connections_was_open_not_the_sum(tmp_path):
    """Three overlapping connections to one host (1.0-2.0, 1.5-2.5, 3.0-3.25) were open together
    for 1.75 s, which the TIME column says, not their 2.25 s summed."""
    spans = [(1.0, 2.0), (1.5, 2.5), (3.0, 3.25)]
    conns = [
        {
            **conn_record(i, tx=10, rx=10, duration=b - a),
            "remote": ["127.0.0.1", 80],
            "opened": a,
            "closed": b,
        }
        for i, (a, b) in enumerate(spans, 1)
    ]
    path = saved_run(tmp_path, conns)
    text = netstats("report", str(path), "--by", "host", cwd=tmp_path).stdout
    assert table(text)["127.0.0.1:80"][-1] == "1.750s"
    assert totals_row(text)[-1] == "1.750s"
    rows = json.loads(netstats("report", str(path), "--by", "host", "--format", "json", cwd=tmp_path).stdout)
    (row,) = rows["groups"]["rows"]
    assert (row["busy"], row["duration"]) == (1.75, 2.25)


def test_unknown_figures_are_shown_as_question_marks_and_sums_say_they_have_an_unknown_part(tmp_path):
    path = saved_run(
        tmp_path,
        [conn_record(1, tx=1000, rx=None, duration=0.5), conn_record(2, tx=None, rx=None, duration=0.25)],
    )
    text = netstats("report", str(path), cwd=tmp_path).stdout
    assert text.startswith("netstats: 2 connections, tx 1000 B+?, rx ?, 2.500s")
    rows = table_rows(text)
    assert [row[3:5] for row in rows] == [["1000 B", "?"], ["?", "?"]]
    assert totals_row(text)[2:4] == ["1000 B+?", "?"]
    assert "(? unknown, - not applicable)" in text
    grouped = netstats("report", str(path), "--by", "pid", cwd=tmp_path).stdout
    assert table(grouped)["10"][:3] == ["2", "1000 B+?", "?"]
    # (both opened at 1.0: open together 0.5 s, the longer one's time)
    assert totals_row(grouped) == ["total", "2", "1000 B+?", "?", "?", "?", "-", "0.500s"]


def test_a_connection_made_by_c_code_shows_what_is_not_known(tmp_path):
    # As the kernel census records one: wire bytes only; TLS or not, and the application's bytes,
    # are not known.
    kernel = conn_record(2, tx=None, rx=None, duration=0.5, source="kernel", wire_tx=700, wire_rx=9000)
    path = saved_run(
        tmp_path, [conn_record(1, tx=100, rx=200, duration=0.25, wire_tx=100, wire_rx=200), kernel]
    )
    text = netstats("report", str(path), "--wide", cwd=tmp_path).stdout
    rows = {row[2]: row for row in table_rows(text)}
    assert rows["127.0.0.1:8002"][1] == "tcp+? (C)"
    assert rows["127.0.0.1:8002"][4:9] == ["?", "?", "700 B", "8.8 KiB", "?"]  # TX RX WIRE TX WIRE RX TLS+
    assert rows["127.0.0.1:8001"][4:9] == ["100 B", "200 B", "100 B", "200 B", "-"]
    assert totals_row(text)[2:7] == ["100 B+?", "200 B+?", "800 B", "9.0 KiB", "?"]


def test_grouped_views_have_tls_time_and_a_total_line(tmp_path):
    tls = {"tls": "TLSv1.3", "host": "api.example.org"}
    path = saved_run(
        tmp_path,
        [
            conn_record(1, tx=1000, rx=3000, duration=0.5, wire_tx=1500, wire_rx=5000, **tls),
            conn_record(2, tx=24, rx=76, duration=0.25, wire_tx=24, wire_rx=76),
        ],
    )
    text = netstats("report", str(path), "--by", "host", cwd=tmp_path).stdout
    assert cells(text.splitlines()[2]) == ["HOST", "CONNS", "TX", "RX", "WIRE TX", "WIRE RX", "TLS+", "TIME"]
    assert table(text) == {
        "api.example.org:8001": ["1", "1000 B", "2.9 KiB", "1.5 KiB", "4.9 KiB", "2.4 KiB", "0.500s"],
        "127.0.0.1:8002": ["1", "24 B", "76 B", "24 B", "76 B", "-", "0.250s"],
    }
    # (the two opened together: open 0.5 s in all, not 0.75 s)
    assert totals_row(text) == ["total", "2", "1.0 KiB", "3.0 KiB", "1.5 KiB", "5.0 KiB", "2.4 KiB", "0.500s"]


def test_csv_writes_addresses_as_host_and_port(tmp_path):
    v6 = conn_record(2, tx=1, rx=1, duration=0.1, remote=["::1", 443, 0, 0], local=["::1", 50000, 0, 0])
    path = saved_run(tmp_path, [conn_record(1, tx=5, rx=5, duration=0.1), v6])
    rows = list(
        csv.DictReader(io.StringIO(netstats("report", str(path), "--format", "csv", cwd=tmp_path).stdout))
    )
    assert [(r["remote"], r["local"]) for r in rows] == [
        ("127.0.0.1:8001", "127.0.0.1:40000"),
        ("[::1]:443", "[::1]:50000"),
    ]


# ---- netstats report: any malformed file is one line ----------------------------------------


def run_doc(**changes: Any) -> dict[str, Any]:
    conn = conn_record(1, tx=10, rx=20, duration=0.1)
    doc = {"schema": "netstats.run/1", "program": ["app.py"], "pid": 10, "started": 1.0, "finished": 2.0}
    return {**doc, "exit_code": 0, "connections": [conn], **changes}


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({k: v for k, v in run_doc().items() if k != "pid"}, "'pid' is missing"),
        ({k: v for k, v in run_doc().items() if k != "program"}, "'program' is missing"),
        (run_doc(connections=[{**conn_record(1, 10, 20, 0.1), "rx": "lots"}]), "connection 0: 'rx' must be"),
        (run_doc(connections=[{"pid": 1, "transport": "tcp"}]), "connection 0: 'id' is missing"),
        (run_doc(connections={"a": 1}), "'connections' must be a list"),
        (run_doc(started="yesterday"), "'started' must be a number"),
    ],
    ids=["no-pid", "no-program", "rx-text", "no-id", "connections-object", "started-text"],
)
def test_report_of_a_malformed_run_names_the_file_and_the_problem_in_one_line(tmp_path, doc, problem):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    result = netstats("report", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith(f"netstats report: {path}: ") and problem in line, line


def test_report_of_a_run_with_a_null_count_shows_it_unknown(tmp_path):
    path = tmp_path / "null.json"
    path.write_text(json.dumps(run_doc(connections=[conn_record(1, tx=None, rx=20, duration=0.1)])))
    result = netstats("report", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout)[0][3:5] == ["?", "20 B"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
KEYS = st.sampled_from([*run_doc(), "anything"])
CONN_KEYS = st.sampled_from(
    [*conn_record(1, 1, 1, 1.0), "wire_tx", "wire_rx", "tls", "side", "marks", "local"]
)


@st.composite
def malformed(draw: st.DrawFn) -> Any:
    """A run document with one thing wrong (or several), or any JSON at all."""
    doc = run_doc(connections=[conn_record(1, 10, 20, 0.1), conn_record(2, None, 5, 0.2)])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "connection", "drop", "drop-in-connection"]))
        conns = doc.get("connections")
        conn = draw(st.sampled_from(conns)) if isinstance(conns, list) and conns else None
        if where == "top":
            doc[draw(KEYS)] = draw(JSON)
        elif where == "drop":
            doc.pop(draw(KEYS), None)
        elif isinstance(conn, dict) and where == "connection":
            conn[draw(CONN_KEYS)] = draw(JSON)
        elif isinstance(conn, dict):
            conn.pop(draw(CONN_KEYS), None)
    return draw(st.one_of(st.just(doc), JSON))


@settings(max_examples=300, deadline=None)
@given(
    doc=malformed(),
    fmt=st.sampled_from(["text", "json", "csv"]),
    by=st.sampled_from([None, *GROUPS]),
    layout=st.sampled_from([[], ["--wide"], ["--top", "1"]]),
    sort=st.sampled_from(SORTS),
)
def test_report_of_any_document_renders_or_says_in_one_line_what_is_wrong(doc, fmt, by, layout, sort):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "doc.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(
                ["report", path, "--format", fmt, "--sort", sort, *layout, *(["--by", by] if by else [])]
            )
    if code == 0:
        assert out.getvalue() and not err.getvalue()
    else:
        assert code == 2 and not out.getvalue()
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"netstats report: {path}: "), lines


# ---- help and version -----------------------------------------------------------------------


def test_version_and_the_help_of_report_and_demo(tmp_path):
    version = netstats("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout == f"netstats {netstats_version}\n"
    report = netstats("report", "--help", cwd=tmp_path).stdout
    assert "(default: stdout)" in re.sub(r"\s+", " ", report)
    assert "examples:" in report and "netstats report run.json --by host" in report
    demo = netstats("demo", "--help", cwd=tmp_path).stdout
    assert "loopback HTTP and an HTTPS server" in re.sub(r"\s+", " ", demo)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix addresses are Linux's")
def test_a_unix_socket_with_an_abstract_address_is_saved_and_shown(tmp_path):
    program(
        tmp_path,
        "abstract.py",
        """\
        import os, socket, threading

        name = f"\\0netstats-test-{os.getpid()}".encode()
        server = socket.socket(socket.AF_UNIX)
        server.bind(name)
        server.listen()

        def serve():
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(100) * 2)

        threading.Thread(target=serve).start()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(name)
            s.sendall(b"hello")
            assert s.recv(100) == b"hellohello"
        print(os.getpid())
        """,
        talk=False,
    )
    saved = tmp_path / "run.json"
    result = netstats("run", "--format", "json", "-o", str(saved), "abstract.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pid = result.stdout.strip()
    (conn,) = load(saved)["connections"]
    assert (conn["transport"], conn["remote"], conn["tx"], conn["rx"]) == (
        "unix",
        f"\0netstats-test-{pid}",
        5,
        10,
    )
    text = netstats("report", str(saved), cwd=tmp_path).stdout
    assert table_rows(text)[0][1:5] == ["unix", f"@netstats-test-{pid}", "5 B", "10 B"]
    wide = netstats("report", str(saved), "--wide", cwd=tmp_path).stdout
    assert table_rows(wide)[0][6:9] == ["-", "-", "-"]  # wire bytes and TLS+: not a TCP stream, not TLS


def test_a_modules_own_options_after_dash_m_are_the_programs(tmp_path):
    """`netstats run -m MODULE --its-flag`: as with python -m, what follows MODULE is the
    program's, dashes included (`netstats run -m gunicorn -w 2 app:app`)."""
    data = tmp_path / "d.json"
    data.write_text('{"b": 1, "a": 2}')
    done = netstats("run", "--format", "json", "-o", str(tmp_path / "r.json"), "-m", "json.tool",
                    "--sort-keys", "--compact", str(data), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"a":2,"b":1}\n'
    assert load(tmp_path / "r.json")["program"] == ["-m", "json.tool", "--sort-keys", "--compact", str(data)]


# ---- names are data: shown escaped, never interpreted, in every output ----------------------

NAMED = """\
import socket, ssl, sys
import netstats
port, name = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
with netstats.tag(route=name):  # the name as the SNI and as a tag value
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=name) as s:
        s.sendall(b"x" * 100)
        got = 0
        while got < 100:
            got += len(s.recv(65536))
sys.exit(5)
"""


def run_named(tmp_path: Path, script: str | bytes, name: str, port: int, *options: str) -> bytes:
    """`netstats run OPTIONS SCRIPT PORT NAME` of the NAMED program saved as `script`: its stderr
    (the report), as bytes (a report must not need decoding to be checked). Exit code 5 kept."""
    path = os.path.join(os.fsencode(tmp_path), os.fsencode(script))
    with open(path, "w", encoding="utf-8") as f:
        f.write(NAMED)
    done = subprocess.run(
        [sys.executable, "-m", "netstats", "run", *options, os.fsdecode(path), str(port), name],
        cwd=tmp_path,
        capture_output=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},  # strict, as on a usual UTF-8 terminal
    )
    assert done.returncode == 5, done.stderr.decode(errors="replace")
    return machine_report(Path(os.fsdecode(tmp_path)), list(options), done.stderr)


def machine_report(folder: Path, options: list[str], stderr: bytes) -> bytes:
    """The report of a run: a machine format without -o is in its file in the run's folder,
    and stderr (the program's) holds only the line that says so; else the report is stderr."""
    fmt = options[options.index("--format") + 1] if "--format" in options else "text"
    if fmt == "text" or "-o" in options:
        return stderr
    path = folder / MACHINE_FILES[fmt]
    assert stderr.decode().splitlines()[-1:] == [f"netstats: wrote the report to {path}"], stderr
    return path.read_bytes()


def test_control_characters_of_a_host_and_a_caller_reach_the_terminal_escaped(tmp_path, peer):
    echo = peer("echo", tls=True)
    host = "evil\x1b[31mred\x1b]0;title\x07"  # an SNI value the ssl module sends as it is
    script = "name\x1b[2J.py"  # the caller's file: clears the screen, if printed raw
    for options in ([], ["--wide"], ["--by", "host"], ["--by", "caller"], ["--by", "tag:route"]):
        report = run_named(tmp_path, script, host, echo.port, *options).decode()
        assert "\x1b" not in report and "\x07" not in report, options
        if options[-1:] in ([], ["--wide"], ["host"]):
            assert f"evil\\x1b[31mred\\x1b]0;title\\x07:{echo.port}" in report, report
        if options[-1:] in ([], ["--wide"], ["caller"]):
            assert "name\\x1b[2J.py:" in report, report
        if options[-1:] == ["tag:route"]:
            assert "evil\\x1b[31mred\\x1b]0;title\\x07" in report, report


@pytest.mark.parametrize("host", ["=1+2", "+1+2", "-1+2", "@SUM(1+2)"])
def test_csv_cells_a_spreadsheet_would_run_as_formulas_start_with_a_quote(tmp_path, peer, host):
    echo = peer("echo", tls=True)
    quoted = "'" + host
    rows = list(
        csv.DictReader(
            io.StringIO(run_named(tmp_path, "=1+2.py", host, echo.port, "--format", "csv").decode())
        )
    )
    (row,) = rows
    assert row["host"] == quoted
    assert json.loads(row["tags"])[0]["labels"] == {"route": host}  # (JSON: "[...", no formula)
    assert (row["rx"], row["tx"]) == ("100", "100") and row["pid"].isdigit()  # numbers stay numbers
    by_host = run_named(tmp_path, "=1+2.py", host, echo.port, "--format", "csv", "--by", "host").decode()
    assert [r["host"] for r in csv.DictReader(io.StringIO(by_host))] == [f"{quoted}:{echo.port}"]
    by_tag = run_named(tmp_path, "=1+2.py", host, echo.port, "--format", "csv", "--by", "tag:route").decode()
    assert [r["tag:route"] for r in csv.DictReader(io.StringIO(by_tag))] == [quoted]
    by_caller = run_named(tmp_path, "=1+2.py", host, echo.port, "--format", "csv", "--by", "caller").decode()
    ((caller, count),) = [(r["caller"], r["connections"]) for r in csv.DictReader(io.StringIO(by_caller))]
    assert caller.startswith("'=1+2.py:") and count == "1"


def test_a_program_in_a_folder_whose_name_is_not_utf8_is_run_and_reported(tmp_path, peer):
    echo = peer("echo", tls=True)
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"dir\xff"))  # the caller's path: not UTF-8
    script = b"dir\xff/named.py"
    report = run_named(tmp_path, script, "host", echo.port, "--wide")  # exit code 5 kept (run_named)
    assert b"dir\\xff/named.py:" in report, report  # the byte shown as it was
    for options in (["--by", "caller"], ["--format", "csv"], ["--format", "json"], ["--format", "trace"]):
        saved = tmp_path / "report.out"
        said = run_named(tmp_path, script, "host", echo.port, "-o", str(saved), *options)
        assert said == f"netstats: wrote the report to {saved}\n".encode()
        # (JSON and the trace escape the backslash of the name as shown: dir\\xff in the file)
        assert any(shown in saved.read_bytes() for shown in (b"dir\\xff", b"dir\\udcff", b"dir\\\\xff")), (
            options
        )


HOSTILE_TEXT = "\ud800 m\u00fcnchen \udcff"  # lone surrogates (not UTF-8 at all), and a printable name


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_a_saved_run_holding_lone_surrogates_renders_in_every_format(tmp_path, encoding):
    frame = f"/src/{HOSTILE_TEXT}.py:1 in f"
    tags = [{"labels": {"route": HOSTILE_TEXT}, "rx": 5, "tx": 5}]
    conn = conn_record(
        1, tx=10, rx=20, duration=0.1, host=HOSTILE_TEXT, caller=frame, origin=frame, tags=tags
    )
    path = saved_run(tmp_path, [conn], program=[HOSTILE_TEXT])
    shown = "\\ud800 m\u00fcnchen \\xff" if encoding == "utf-8" else "\\ud800 m\\xfcnchen \\xff"

    def report(*options: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "netstats", "report", str(path), "--wide", *options],
            capture_output=True,
            timeout=TIMEOUT,
            env={**os.environ, "PYTHONIOENCODING": encoding},  # strict: a UTF-8, or an ASCII, terminal
        )
        problems = [line for line in done.stderr.splitlines() if not line.startswith(b"netstats: wrote ")]
        assert done.returncode == 0 and not problems, done.stderr.decode(errors="replace")
        return done.stdout.decode(encoding)

    for by in ("host", "caller", "tag:route"):
        assert shown in report("--by", by), by
    assert f"{shown}:8001" in report() and f"/src/{shown}.py:1 in f" in report()
    (row,) = csv.DictReader(io.StringIO(report("--format", "csv")))
    assert (row["host"], row["caller"]) == (shown, f"/src/{shown}.py:1 in f")
    rows = csv.DictReader(io.StringIO(report("--format", "csv", "--by", "tag:route")))
    assert sorted(r["tag:route"] for r in rows) == ["", shown]  # and the untagged rest
    saved, again = json.loads(path.read_text()), json.loads(report("--format", "json"))
    assert (again["program"], again["connections"]) == (saved["program"], saved["connections"])  # exact
    names = [e["args"].get("name") for e in json.loads(report("--format", "trace"))["traceEvents"]]
    escaped = "\\ud800 m\u00fcnchen \\xff"  # the track and process as the text report names them
    assert f"#1 tcp {escaped}:8001" in names and escaped in names
    page = tmp_path / "page.html"
    assert report("--html", str(page))
    assert json.dumps(escaped)[1:-1] in page.read_text(encoding="ascii")  # shown so, in JSON


SINCE_1970 = "a time in seconds since 1970 (0 to 1e+10)"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"connection": {"opened": -1e308, "closed": 1e308}}, f"'opened' must be {SINCE_1970}"),
        ({"connection": {"opened": 1.5, "closed": 1e308}}, f"'closed' must be {SINCE_1970}"),
        ({"started": 1e17}, f"'started' must be {SINCE_1970}, not 1e+17"),
        ({"started": 0.0, "finished": 1e12}, f"'finished' must be {SINCE_1970}, not 1000000000000.0"),
        ({"started": 2.0, "finished": 1.0}, "'finished' (1.0) is before 'started' (2.0)"),
        ({"connection": {"opened": 2.0, "closed": 1.5}}, "connection 0: 'opened' (2.0) is after 'closed'"),
        ({"connection": {"connected": 1.9, "closed": 1.5}}, "'connected' (1.9) is after 'closed'"),
        ({"connection": {"first_write": 3.0}}, "'first_write' (3.0) is after 'closed' (1.1)"),
        ({"connection": {"duration": -1.0}}, "'duration' must be a number of seconds (0 to 1e+10)"),
        ({"connection": {"ttfb": 1e300}}, "'ttfb' must be a number of seconds"),
    ],
    ids=["opened-1e308", "closed-1e308", "started-1e17", "span-1e12", "finished-first", "closed-first",
         "connected-late", "first-write-late", "negative-duration", "ttfb-1e300"],
)  # fmt: skip
def test_a_saved_run_whose_times_are_not_a_runs_is_refused_in_one_line_naming_the_field(
    tmp_path, changes, field
):
    conn = {**conn_record(1, tx=10, rx=20, duration=0.1), **changes.pop("connection", {})}
    path = saved_run(tmp_path, [conn], **changes)
    for options in (["--html", "page.html"], ["--format", "trace"], ["--format", "csv"], []):
        result = netstats("report", str(path), *options, cwd=tmp_path)
        assert (result.returncode, result.stdout) == (2, ""), (options, result.stderr)
        line = one_line(result.stderr)
        assert line.startswith(f"netstats report: {path}: ") and field in line, line
        assert not (tmp_path / "page.html").exists()


# ---- children that are other Pythons: they see nothing of netstats ---------------------------

OLD_PYTHONS = ("2.7", "3.6", "3.8")  # pyenv's, on the machines that run the suite


def old_python(version: str) -> str | None:
    """pyenv's Python `version` (its latest patch), else pythonX.Y on PATH, else None."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    installs = sorted(root.glob(f"{version}.*/bin/python{version}"), key=lambda p: p.parts[-3])
    return str(installs[-1]) if installs else shutil.which(f"python{version}")


# A child of any Python, 2.7 on: what it sees of netstats, and that its own sitecustomize ran.
OLD_CHILD = """\
import os, sys
print(sorted(m for m in sys.modules if m.startswith("netstats")))
print(os.environ["NETSTATS_PACKAGE_PATH"] in sys.path)
"""
USER_SITECUSTOMIZE = """\
import os, sys
with open(os.environ["SITECUSTOMIZE_RAN"], "a") as f:
    f.write("%d.%d %d\\n" % (sys.version_info[0], sys.version_info[1], os.getpid()))
"""


@pytest.mark.parametrize("version", OLD_PYTHONS)
def test_a_child_that_is_an_older_python_sees_nothing_of_netstats_and_runs_its_own_sitecustomize(
    tmp_path, version
):
    python = old_python(version)
    if python is None:
        if os.environ.get("CI") and not any(old_python(v) for v in OLD_PYTHONS):
            pytest.fail(f"none of Python {', '.join(OLD_PYTHONS)} is on this machine (pyenv's, in CI)")
        pytest.skip(f"no Python {version} here")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(USER_SITECUSTOMIZE)
    ran = tmp_path / "sitecustomize-ran"
    program(
        tmp_path,
        "parent.py",
        f"import subprocess, sys\nsys.exit(subprocess.call([{python!r}, '-c', {OLD_CHILD!r}]))\n",
        talk=False,
    )
    done = subprocess.run(
        [sys.executable, "-m", "netstats", "run", "-o", "report.txt", "parent.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site"), "SITECUSTOMIZE_RAN": str(ran)},
    )
    # no "Error in sitecustomize", nothing but where the report went
    assert done.stderr == f"netstats: wrote the report to {tmp_path / 'report.txt'}\n"
    assert (done.returncode, done.stdout) == (0, "[]\nFalse\n")  # no netstats module, not on its path
    assert version in ran.read_text().split(), ran.read_text()  # the child's own sitecustomize ran
    assert (tmp_path / "report.txt").read_text().startswith("netstats: 0 connections")


def test_a_child_of_this_python_runs_its_own_sitecustomize_after_netstats_hook(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(USER_SITECUSTOMIZE)
    ran = tmp_path / "sitecustomize-ran"
    child = "import os, sys; print('netstats._child' in sys.modules, os.getpid())"
    program(
        tmp_path, "parent.py", f"import subprocess, sys\nsubprocess.call([sys.executable, '-c', {child!r}])\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "netstats", "run", "-o", "report.txt", "parent.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site"), "SITECUSTOMIZE_RAN": str(ran)},
    )
    loaded, pid = done.stdout.split()
    said = f"netstats: wrote the report to {tmp_path / 'report.txt'}\n"
    assert (done.returncode, done.stderr, loaded) == (0, said, "True")  # netstats' hook ran in the child
    this = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"{this} {pid}" in ran.read_text().splitlines()  # and then the child's own sitecustomize


@pytest.mark.parametrize("target", ["-", "/dev/stdin"])
def test_a_program_piped_on_stdin_runs_as_python_runs_it(tmp_path, peer, target):
    """`netstats run -` and `netstats run /dev/stdin` read the program from stdin, as python
    does: it runs, with its argv, and its connection is in the report."""
    echo = peer("echo")
    source = TALK + f"\nimport sys\ntalk({echo.port}, 321)\nprint(sys.argv)\n"
    done = netstats("run", "--format", "json", "-o", str(tmp_path / "r.json"), target, "x", cwd=tmp_path,
                    stdin=source)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"[{target!r}, 'x']\n"
    assert [(c["tx"], c["rx"]) for c in by_port(load(tmp_path / "r.json"), echo.port)] == [(321, 321)]
    assert [(r["rx"], r["tx"]) for r in echo.counts()] == [(321, 321)]


def test_connect_and_ttfb_are_not_applicable_to_udp_and_to_attempts_that_never_connected(tmp_path):
    """CONNECT and TTFB say "-" (cannot exist) for UDP and for a refused attempt, "?" only where a
    TCP connection connected and the figure is not known."""
    path = saved_run(
        tmp_path,
        [
            conn_record(1, tx=10, rx=10, duration=0.1, transport="udp", connected=1.0),
            conn_record(2, tx=0, rx=0, duration=0.1, error="ConnectionRefusedError"),
            conn_record(3, tx=5, rx=5, duration=0.1, connected=1.0),
        ],
    )
    wide = netstats("report", str(path), "--wide", "--sort", "time", cwd=tmp_path).stdout
    header = cells(wide.splitlines()[2])
    at = {row[2]: row for row in table_rows(wide)}
    connect, ttfb = header.index("CONNECT"), header.index("TTFB")
    assert [at[f"127.0.0.1:{8000 + i}"][connect] for i in (1, 2, 3)] == ["-", "-", "?"]
    assert [at[f"127.0.0.1:{8000 + i}"][ttfb] for i in (1, 2, 3)] == ["-", "-", "?"]


def test_a_connection_found_by_the_kernel_sorts_by_its_wire_bytes_not_last(tmp_path):
    """A connection whose application bytes are unknown (found by the census) ranks by what is
    known of it, its wire bytes: above a refused attempt that moved nothing."""
    path = saved_run(
        tmp_path,
        [
            conn_record(1, tx=0, rx=0, duration=0.1, error="ConnectionRefusedError"),
            conn_record(2, tx=None, rx=None, duration=0.1, source="kernel", wire_tx=300, wire_rx=9000),
            conn_record(3, tx=100, rx=20000, duration=0.1),
        ],
    )
    text = netstats("report", str(path), cwd=tmp_path).stdout
    assert [row[2] for row in table_rows(text)] == ["127.0.0.1:8003", "127.0.0.1:8002", "127.0.0.1:8001"]


def test_grouping_by_tag_says_when_no_connection_has_the_label_and_when_a_connection_counts_twice(tmp_path):
    """`--by tag:KEY` with a label nobody used says so (instead of an untagged table without a
    word), and a connection whose bytes went under two values is said to count in both rows."""
    tags = [{"labels": {"route": "/a"}, "rx": 10, "tx": 5}, {"labels": {"route": "/b"}, "rx": 20, "tx": 5}]
    path = saved_run(tmp_path, [conn_record(1, tx=10, rx=30, duration=0.1, tags=tags)])
    nosuch = netstats("report", str(path), "--by", "tag:nosuch", cwd=tmp_path).stdout
    assert "(no connection moved bytes under the tag label 'nosuch': all are untagged)" in nosuch
    route = netstats("report", str(path), "--by", "tag:route", cwd=tmp_path).stdout
    assert "(CONNS add up to more than the total: a connection under several values counts in each)" in route
    assert "tag label" not in route
