"""The pytest plugin, specified through real pytest runs on loopback.

Each test writes a small test suite with pytester and runs it in a separate pytest process
(runpytest_subprocess): real sockets to an echo server on 127.0.0.1 that the generated
conftest starts and that counts, in its own code, what it accepted and read. Every expected
byte count is a known payload size or that server's count.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from typing import Any

import pytest

from netstats import Connection
from netstats.pytest_plugin import AllowHosts

pytest_plugins = ["pytester"]

CONFTEST = """
import socket, threading
import pytest

class Echo:
    '''Loopback echo server: counts the connections it accepted and the bytes it read.'''

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        conn.settimeout(30)
        with conn:
            while data := conn.recv(65536):
                self.received += len(data)
                conn.sendall(data)

    def connect(self, host="127.0.0.1"):
        return socket.create_connection((host, self.port), timeout=10)

    def talk(self, n, host="127.0.0.1", sock=None):
        '''Send n bytes and read the n echoed back: tx = rx = n.'''
        s = sock or self.connect(host)
        try:
            s.sendall(b"x" * n)
            got = 0
            while got < n:
                chunk = s.recv(65536)
                assert chunk, "echo server closed early"
                got += len(chunk)
        finally:
            if sock is None:
                s.close()

@pytest.fixture(scope="session")
def echo():
    server = Echo()
    yield server
    server.listener.close()
    with open("server_received.txt", "a") as out:
        out.write(f"{server.received}\\n")
"""

SIZE = r"(?:\d+ B|\d+\.\d (?:KiB|MiB|GiB))(?:\+\?)?"  # as every netstats report shows a size
ROW = re.compile(rf"^\s*({SIZE})\s+({SIZE})\s+(?:{SIZE}|-|\?)\s+(\d+)  (.+?)(?:  |$)")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def summary(result: pytest.RunResult) -> list[tuple[str, str, int, str]]:
    """The rows of the netstats section, as (tx, rx, connections, name), in printed order."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "netstats: network use per test" in line)
    rows = []
    for line in lines[start + 2 :]:
        m = ROW.match(line)
        if not m:
            break
        tx, rx, conns, name = m.groups()
        if name.startswith("total ("):
            break
        rows.append((tx, rx, int(conns), name))
    return rows


def outcomes(result: pytest.RunResult) -> set[tuple[str, str]]:
    """(nodeid, PASSED / FAILED / ERROR) from -rA's short summary; a test with an error at
    teardown is there twice: its call's outcome and the ERROR."""
    found = set()
    for line in result.stdout.lines:
        m = re.match(r"^(PASSED|FAILED|ERROR) (\S+)", line)
        if m:
            found.add((m.group(2), m.group(1)))
    return found


# ---- inactive unless asked --------------------------------------------------------------


def test_without_flags_markers_or_fixture_nothing_is_patched_or_printed(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import _socket, socket, ssl

        def test_plain(echo):
            assert socket.socket.__bases__ == (_socket.socket,)  # the stock class, not a subclass
            assert not hasattr(socket.getaddrinfo, "__wrapped__")
            assert ssl.SSLContext.sslsocket_class is ssl.SSLSocket
            echo.talk(100)
        """
    )
    result = run(suite)
    result.assert_outcomes(passed=1)
    assert [line for line in result.stdout.lines if "netstats" in line] == [
        line for line in result.stdout.lines if line.startswith("plugins:")
    ]
    run(suite, "--netstats").assert_outcomes(failed=1)  # the same checks, with the plugin asked


def test_marker_is_registered_for_strict_markers(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.netstats(max_tx=10)
        def test_quiet():
            pass
        """
    )
    run(suite, "--strict-markers").assert_outcomes(passed=1)
    run(suite, "--markers").stdout.fnmatch_lines(["@pytest.mark.netstats(max_tx=None, *allow_hosts=None)*"])


# ---- the summary and the JSON -----------------------------------------------------------


def test_summary_lists_tests_that_touched_the_network_busiest_first_with_totals(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_a="""
        def test_small(echo):
            echo.talk(100)

        def test_big(echo):
            echo.talk(5000)
            echo.talk(3000)

        def test_quiet():
            pass
        """
    )
    result = run(suite, "--netstats")
    result.assert_outcomes(passed=3)
    # Sizes as every netstats report shows them: 8000 bytes are 7.8 KiB; "-": no TLS here.
    big, small = (
        ("7.8 KiB", "7.8 KiB", 2, "test_a.py::test_big"),
        ("100 B", "100 B", 1, "test_a.py::test_small"),
    )
    assert summary(result) == [big, small]
    result.stdout.fnmatch_lines(
        [
            "*== netstats: network use per test ==*",
            "*tx*rx*tls+*conns*test*hosts",
            "*7.8 KiB*7.8 KiB*-*2*test_a.py::test_big*127.0.0.1:*",
            "*100 B*100 B*-*1*test_a.py::test_small*127.0.0.1:*",
            "*7.9 KiB*7.9 KiB*-*3*total (2 of 3 tests used the network)",
            "(? unknown, - not applicable)",
        ]
    )
    assert "8,000" not in result.stdout.str()


def test_netstats_top_limits_the_rows_but_not_the_totals(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_a="""
        import pytest

        @pytest.mark.parametrize("n", [10, 20, 30, 40])
        def test_n(echo, n):
            echo.talk(n)
        """
    )
    result = run(suite, "--netstats", "--netstats-top", "2")
    assert summary(result) == [
        ("40 B", "40 B", 1, "test_a.py::test_n[40]"),
        ("30 B", "30 B", 1, "test_a.py::test_n[30]"),
    ]
    result.stdout.fnmatch_lines(["... 2 more row(s) not shown (--netstats-top 2)", "*100 B*100 B*4*total*"])


def test_netstats_top_without_netstats_is_a_usage_error(suite: pytest.Pytester) -> None:
    suite.makepyfile("def test_x():\n    pass\n")
    result = run(suite, "--netstats-top", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--netstats-top limits the rows of --netstats's summary: add --netstats*"])
    assert "passed" not in result.stdout.str()


@pytest.mark.parametrize(
    ("path", "problem"),
    [("nowhere/x.json", "no such directory *nowhere*"), (".", "is a directory")],
    ids=["no-folder", "a-folder"],
)
def test_netstats_json_to_a_path_that_cannot_be_written_fails_at_start_up(
    suite: pytest.Pytester, path: str, problem: str
) -> None:
    suite.makepyfile("def test_x():\n    open('ran.txt', 'w').close()\n")
    result = run(suite, "--netstats-json", path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--netstats-json {path}: {problem}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert not (suite.path / "ran.txt").exists()  # no test ran: no data to lose


def test_json_file_holds_every_test_with_its_connections(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_a="""
        def test_two(echo):
            echo.talk(1234)
            echo.talk(66)

        def test_one(echo):
            echo.talk(4321, host="localhost")

        def test_quiet():
            pass
        """
    )
    result = run(suite, "--netstats-json", "out.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["netstats: per-test data written to out.json"])
    assert "network use per test" not in result.stdout.str()  # the JSON alone prints no table
    doc = json.loads((suite.path / "out.json").read_text())
    server_received = int((suite.path / "server_received.txt").read_text())
    assert server_received == 1234 + 66 + 4321
    assert doc["version"] == 1
    assert doc["totals"] == {
        "tx": server_received,
        "rx": server_received,
        "unknown": 0,  # connections whose application bytes netstats could not know (C code)
        "tls_overhead": 0,  # plain TCP
        "connections": 3,
        "tests": 3,
    }
    rows = {row["name"]: row for row in doc["rows"]}
    assert [r["name"] for r in doc["rows"]] == sorted(rows)
    assert rows["test_a.py::test_quiet"] == {
        "name": "test_a.py::test_quiet",
        "kind": "test",
        "tx": 0,
        "rx": 0,
        "unknown": 0,
        "tls_overhead": 0,
        "connections": [],
        "verdict": "no budget",
        "budget": None,
        "measured": {"tx": 0, "rx": 0, "tx_at_most": 0, "rx_at_most": 0, "connections": 0},
        "problems": [],
    }
    two = rows["test_a.py::test_two"]
    assert (two["kind"], two["tx"], two["rx"]) == ("test", 1300, 1300)
    assert [(c["tx"], c["rx"]) for c in two["connections"]] == [(1234, 1234), (66, 66)]
    first = two["connections"][0]
    assert set(first) == {
        *("id", "pid", "transport", "source", "host", "remote", "tls", "error"),
        *("opened_here", "tx", "rx", "wire_tx", "wire_rx", "tls_overhead", "origin", "caller"),
    }
    assert (first["wire_tx"], first["wire_rx"], first["tls_overhead"]) == (1234, 1234, 0)  # plain TCP
    assert first["transport"] == "tcp" and first["remote"][0] == "127.0.0.1" and first["opened_here"]
    assert first["tls"] is None and first["error"] is None and "conftest.py" in first["origin"]
    one = rows["test_a.py::test_one"]
    assert (one["tx"], one["rx"]) == (4321, 4321)
    connected = [c for c in one["connections"] if c["error"] is None]
    assert [c["host"] for c in connected] == ["localhost"]


# ---- attribution: function fixtures count for the test, wider ones on their own row ----


def test_fixture_traffic_is_attributed_by_scope(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_a="""
        import pytest

        @pytest.fixture
        def per_test(echo):
            echo.talk(400)
            yield
            echo.talk(600)

        @pytest.fixture(scope="module")
        def per_module(echo):
            echo.talk(7)
            yield
            echo.talk(9)

        @pytest.fixture(scope="session")
        def shared(echo):
            sock = echo.connect()
            echo.talk(50, sock=sock)
            yield sock
            sock.close()

        def test_one(echo, per_test, per_module):
            echo.talk(100)

        def test_two(echo, per_module, shared):
            echo.talk(20, sock=shared)
            echo.talk(30, sock=shared)

        def test_three(echo, shared):
            echo.talk(3, sock=shared)
        """
    )
    result = run(suite, "--netstats", "--netstats-json", "out.json", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    expected = [
        (1100, 1100, 3, "test_a.py::test_one"),  # its function fixture's setup and teardown too
        (50, 50, 1, "<session fixtures>"),
        (50, 50, 1, "test_a.py::test_two"),  # on the connection the session fixture opened
        (16, 16, 2, "<module fixtures of test_a.py>"),  # set up in test_one, torn down in test_three
        (3, 3, 1, "test_a.py::test_three"),
    ]
    rows = {r["name"]: r for r in json.loads((suite.path / "out.json").read_text())["rows"]}
    assert [
        (rows[name]["tx"], rows[name]["rx"], len(rows[name]["connections"]), name) for *_, name in expected
    ] == expected
    assert [row[3] for row in summary(result)] == [name for *_, name in expected]  # busiest first


# ---- budgets ----------------------------------------------------------------------------

BUDGETS = """
import pytest

@pytest.mark.netstats(max_tx=1000, max_rx=1000, max_connections=2)
def test_within(echo):
    echo.talk(500)
    echo.talk(500)

@pytest.mark.netstats(max_tx=1000)
def test_over_tx(echo):
    echo.talk(300)
    echo.talk(900)

@pytest.mark.netstats(max_rx=10)
def test_over_rx(echo):
    echo.talk(11)

@pytest.mark.netstats(max_connections=2)
def test_too_many_connections(echo):
    for _ in range(3):
        echo.talk(1)

@pytest.fixture
def chatty_teardown(echo):
    echo.talk(400)
    yield
    echo.talk(600)

@pytest.mark.netstats(max_tx=1100)
def test_setup_and_teardown_count_within(echo, chatty_teardown):
    echo.talk(100)

@pytest.mark.netstats(max_tx=1000)
def test_teardown_goes_over(echo, chatty_teardown):
    echo.talk(100)
"""


def place_of(path: Any, text: str) -> str:
    """ "file:line" of the one line of the file at path that holds text."""
    (number,) = [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return f"{path.name}:{number}"


def test_budgets_pass_within_and_fail_over_naming_the_connections(suite: pytest.Pytester) -> None:
    test = suite.makepyfile(test_b=BUDGETS)

    def at(text: str) -> str:
        return place_of(test, text)

    result = run(suite, "-rA")
    assert outcomes(result) == {
        ("test_b.py::test_within", "PASSED"),
        ("test_b.py::test_over_tx", "FAILED"),
        ("test_b.py::test_over_rx", "FAILED"),
        ("test_b.py::test_too_many_connections", "FAILED"),
        ("test_b.py::test_setup_and_teardown_count_within", "PASSED"),
        ("test_b.py::test_teardown_goes_over", "PASSED"),  # the call kept to the budget,
        ("test_b.py::test_teardown_goes_over", "ERROR"),  # the teardown did not
    }
    result.stdout.fnmatch_lines(
        [
            "*netstats: test_b.py::test_over_tx broke its network budget",
            "  tx 1,200 bytes > max_tx=1,000:",  # each connection at the test's own line
            f"    127.0.0.1:* tx=900 rx=900 opened at {at('echo.talk(900)')} in test_over_tx",
            f"    127.0.0.1:* tx=300 rx=300 opened at {at('echo.talk(300)')} in test_over_tx",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*netstats: test_b.py::test_over_rx broke its network budget",
            "  rx 11 bytes > max_rx=10:",
            "    127.0.0.1:* tx=11 rx=11 opened at *",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*netstats: test_b.py::test_too_many_connections broke*", "  3 connections > max_connections=2:"]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_teardown_goes_over*",
            "*netstats: test_b.py::test_teardown_goes_over broke its network budget",
            "  tx 1,100 bytes > max_tx=1,000:",  # its fixture's connections: the fixture's lines
            f"    127.0.0.1:* tx=600 rx=600 opened at {at('echo.talk(600)')} in chatty_teardown",
            f"    127.0.0.1:* tx=400 rx=400 opened at {at('echo.talk(400)')} in chatty_teardown",
        ]
    )


# ---- a budget failure names the test's own line; the JSON has each test's verdict ----------

THROUGH_LIBRARIES = """
import http.server, threading
import pytest, requests
import client

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2000")
        self.end_headers()
        self.wfile.write(b"z" * 2000)

    def log_message(self, *args):
        pass

@pytest.fixture(scope="module")
def url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()

@pytest.mark.netstats(max_rx=100)
def test_requests(url):
    assert len(requests.get(url).content) == 2000

@pytest.mark.netstats(max_rx=100)
def test_through_a_helper(url):
    assert client.fetch(url) == 2000

@pytest.mark.netstats(max_tx=100)
def test_a_line_of_its_own(echo):
    echo.talk(200)

@pytest.mark.netstats(max_tx=100)
def test_in_a_thread(echo):
    thread = threading.Thread(target=echo.talk, args=(200,))
    thread.start()
    thread.join()
"""


def test_a_budget_failure_names_the_line_in_the_tests_file_not_the_client_librarys(
    suite: pytest.Pytester,
) -> None:
    # (not importorskip: requests imported here would leave with pytester's sys.modules snapshot,
    # and the next test's `import requests` would get a second copy of it and of http.cookiejar)
    if importlib.util.find_spec("requests") is None:
        pytest.skip("requests is not installed")
    suite.makepyfile(client="import requests\n\ndef fetch(url):\n    return len(requests.get(url).content)\n")
    test = suite.makepyfile(test_e=THROUGH_LIBRARIES)
    result = run(suite, "-rA", "-p", "no:randomly")
    result.assert_outcomes(failed=4)
    for name, call in [
        ("test_requests", "requests.get(url)"),  # (origin: urllib3's connection.py)
        ("test_through_a_helper", "client.fetch(url)"),  # (caller: client.py, the user's helper)
        ("test_a_line_of_its_own", "echo.talk(200)"),  # (caller: conftest.py, the echo's connect)
    ]:
        result.stdout.fnmatch_lines(
            [
                f"*netstats: test_e.py::{name} broke its network budget",
                f"    * opened at {place_of(test, call)} in {name}",
            ]
        )
    # No frame of the test's file in the thread that connected: the test where pytest places it
    # (its decorator's line, the one before its def), and where the connection was made.
    file, line = place_of(test, "def test_in_a_thread").split(":")
    result.stdout.fnmatch_lines(
        [
            "*netstats: test_e.py::test_in_a_thread broke its network budget",
            f"    * opened at test_in_a_thread ({file}:{int(line) - 1}), at conftest.py:* in connect",
        ]
    )
    assert "urllib3" not in result.stdout.str()


VERDICTS = """
import _socket, time
import pytest

@pytest.mark.netstats(max_tx=1000, max_connections=2)
def test_within(echo):
    echo.talk(500)
    echo.talk(400)

@pytest.mark.netstats(max_tx=1000)
def test_over(echo):
    echo.talk(700)
    echo.talk(600)

@pytest.mark.netstats(allow_hosts=["10.0.0.0/8"])
def test_elsewhere(echo):
    echo.talk(10)

def test_no_budget(echo):
    echo.talk(5)

def talk_unseen(port, n, netstats):
    '''n bytes each way through the stock _socket, which netstats does not wrap: the kernel
    census finds the connection, and knows its wire bytes only.'''
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    s.connect(("127.0.0.1", port))
    s.sendall(b"x" * n)
    got = 0
    while got < n:
        got += len(s.recv(65536))
    found = []
    for _ in range(3000):  # until the census has it (it sweeps every 0.15 s)
        found = [c for c in netstats.connections if c.source == "kernel"]
        if found:
            break
        time.sleep(0.01)
    s.close()
    for _ in range(3000):  # until its end is known, with its final wire bytes
        if found and found[0].closed is not None:
            break
        time.sleep(0.01)
    assert found and found[0].closed is not None and found[0].wire_tx == n

@pytest.mark.netstats(max_tx=2000)
def test_unseen_within_its_wire_bytes(echo, netstats):
    talk_unseen(echo.port, 1000, netstats)

@pytest.mark.netstats(max_tx=2000)
def test_unseen_over_by_its_wire_bytes(echo, netstats):
    talk_unseen(echo.port, 5000, netstats)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel census: Linux")
def test_json_gives_each_test_its_verdict_and_never_passes_bytes_nobody_counted(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(test_v=VERDICTS)
    result = run(suite, "--netstats-json", "out.json", "-p", "no:randomly")
    result.assert_outcomes(passed=3, failed=3)
    doc = json.loads((suite.path / "out.json").read_text())
    rows = {r["name"].split("::")[1]: r for r in doc["rows"] if r["kind"] == "test"}
    assert all("verdict" not in r for r in doc["rows"] if r["kind"] != "test")  # a test's own
    assert int((suite.path / "server_received.txt").read_text()) == 900 + 1300 + 10 + 5 + 1000 + 5000
    expected = {  # (verdict, measured tx, tx at most, connections), each a known payload size
        "test_within": ("passed", 900, 900, 2),
        "test_over": ("over budget", 1300, 1300, 2),
        "test_elsewhere": ("host not allowed", 10, 10, 1),
        "test_no_budget": ("no budget", 5, 5, 1),
        # application bytes nobody counted: within the budget only by their wire bytes, ...
        "test_unseen_within_its_wire_bytes": ("passed", None, 1000, 1),
        # ... and over it by those alone: not known to be over, nor within
        "test_unseen_over_by_its_wire_bytes": ("not measured", None, 5000, 1),
    }
    assert {
        name: (
            row["verdict"],
            row["measured"]["tx"],
            row["measured"]["tx_at_most"],
            row["measured"]["connections"],
        )
        for name, row in rows.items()
    } == expected
    assert rows["test_within"]["budget"] == {
        "max_tx": 1000,
        "max_rx": None,
        "max_connections": 2,
        "allow_hosts": None,
    }
    assert rows["test_within"]["problems"] == [] and rows["test_no_budget"]["budget"] is None
    assert rows["test_over"]["problems"] == ["tx 1,300 bytes > max_tx=1,000"]
    assert rows["test_elsewhere"]["budget"]["allow_hosts"] == ["10.0.0.0/8"]
    assert rows["test_elsewhere"]["problems"] == ["host not in allow_hosts=['10.0.0.0/8']"]
    assert rows["test_unseen_over_by_its_wire_bytes"]["problems"] == [
        "tx 0 bytes + up to 5,000 not known > max_tx=2,000"
    ]


def test_a_budget_failure_shows_a_host_with_control_characters_escaped(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_f="""
        import socket
        import pytest

        @pytest.mark.netstats(allow_hosts=["localhost"])
        def test_odd_name():
            with socket.socket() as s, pytest.raises(OSError):
                s.connect(("evil\\x1b[31mred\\x1b]0;title\\x07", 80))  # no such name: the attempt is listed
        """
    )
    result = run(suite)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "\x1b" not in out and "\x07" not in out  # nothing the terminal would act on
    result.stdout.fnmatch_lines(
        ["    evil\\x1b[[]31mred\\x1b]0;title\\x07:80 (gaierror) tx=0 rx=0 opened at test_f.py:*"]
    )


def test_marker_arguments_are_checked(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.netstats(max_bytes=1)
        def test_typo():
            pass

        @pytest.mark.netstats(max_tx="1k")
        def test_not_an_int():
            pass
        """
    )
    result = run(suite)
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "test_typo: unknown netstats marker argument(s) ['max_bytes']; valid: max_tx, max_rx," in out
    assert "test_not_an_int: netstats max_tx must be an int >= 0, not '1k'" in out


# ---- allow_hosts and blocking -----------------------------------------------------------

ALLOW = """
import pytest

@pytest.mark.netstats(allow_hosts=["127.0.0.1"])
def test_address(echo):
    echo.talk(10)

@pytest.mark.netstats(allow_hosts=["localhost"])
def test_localhost_name_allows_its_address(echo):
    echo.talk(10)

@pytest.mark.netstats(allow_hosts=["::1"])
def test_ipv6_loopback_is_not_ipv4_loopback(echo):
    echo.talk(10)

@pytest.mark.netstats(allow_hosts=["127.0.0.2"])
def test_another_loopback_address_is_another_host(echo):
    echo.talk(10)

@pytest.mark.netstats(allow_hosts=["127.0.0.0/8"])
def test_cidr(echo):
    echo.talk(10)

@pytest.mark.netstats(allow_hosts=["10.0.0.0/8", "db.internal"])
def test_not_allowed(echo):
    echo.talk(10)

@pytest.mark.netstats(allow_hosts=["db.internal"])
class TestClass:
    def test_class_marker_applies(self, echo):
        echo.talk(10)

    @pytest.mark.netstats(allow_hosts=["localhost"])
    def test_closer_marker_wins(self, echo):
        echo.talk(10)
"""


def test_allow_hosts_takes_names_addresses_and_ranges_and_an_address_is_only_itself(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(test_c=ALLOW)
    result = run(suite, "-rA")
    assert outcomes(result) == {
        ("test_c.py::test_address", "PASSED"),
        ("test_c.py::test_localhost_name_allows_its_address", "PASSED"),
        ("test_c.py::test_ipv6_loopback_is_not_ipv4_loopback", "FAILED"),
        ("test_c.py::test_another_loopback_address_is_another_host", "FAILED"),
        ("test_c.py::test_cidr", "PASSED"),
        ("test_c.py::test_not_allowed", "FAILED"),
        ("test_c.py::TestClass::test_class_marker_applies", "FAILED"),
        ("test_c.py::TestClass::test_closer_marker_wins", "PASSED"),
    }
    result.stdout.fnmatch_lines(
        [
            "*netstats: test_c.py::test_not_allowed broke its network budget",
            "  host not in allow_hosts=['10.0.0.0/8', 'db.internal']:",
            "    *127.0.0.1* tx=10 rx=10 opened at test_c.py:* in test_not_allowed",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*netstats: test_c.py::test_another_loopback_address_is_another_host broke its network budget",
            "  host not in allow_hosts=['127.0.0.2']:",
            "    127.0.0.1:* tx=10 rx=10 opened at *",
        ]
    )


def conn(remote: Any, host: str | None = None, transport: str = "tcp") -> Connection:
    c = Connection(1, "client", transport)
    c.remote, c.host = remote, host
    return c


def test_allow_hosts_matching_rules() -> None:
    allow = AllowHosts(["api.example.org", "192.0.2.0/24", "2001:db8::/32", "Localhost."])
    assert allow.allows(conn(("203.0.113.9", 443), "api.example.org"))  # by the name asked for
    assert allow.allows(conn(("203.0.113.9", 443), "API.Example.org."))
    assert not allow.allows(conn(("203.0.113.9", 443), "www.example.org"))
    assert allow.allows(conn(("192.0.2.77", 80)))  # by range
    assert not allow.allows(conn(("192.0.3.1", 80)))
    assert allow.allows(conn(("2001:db8::5", 80, 0, 0)))
    assert allow.allows(conn(("::ffff:192.0.2.1", 80, 0, 0)))  # IPv4-mapped
    # "localhost" stands for 127.0.0.1 and ::1, not for every loopback address
    assert allow.allows(conn(("127.0.0.1", 5432))) and allow.allows(conn(("::1", 5432, 0, 0)))
    assert not allow.allows(conn(("127.8.9.10", 5432)))
    assert not allow.allows(conn(None, "db.internal"))  # a name that did not resolve still counts
    assert allow.allows(conn("/run/app.sock", transport="unix"))  # local IPC is never a host
    assert allow.allows(conn(None, transport="udp"))  # unconnected UDP: no peer to judge

    # An address written out matches only itself (IPv4-mapped included), whatever name led there.
    ipv4 = AllowHosts(["127.0.0.1"])
    assert ipv4.allows(conn(("127.0.0.1", 1), "localhost"))
    assert ipv4.allows(conn(("::ffff:127.0.0.1", 1, 0, 0)))
    assert not ipv4.allows(conn(("::1", 1, 0, 0), "localhost"))
    assert not ipv4.allows(conn(("127.0.0.2", 1)))
    assert not AllowHosts(["127.0.0.2"]).allows(conn(("127.0.0.1", 1)))
    ipv6 = AllowHosts(["::1"])
    assert ipv6.allows(conn(("::1", 1, 0, 0), "localhost"))
    assert not ipv6.allows(conn(("127.0.0.1", 1), "localhost"))
    assert not ipv6.allows(conn(("192.0.2.1", 1)))
    assert not AllowHosts([]).allows(conn(("127.0.0.1", 1)))


BLOCK = """
import time
import pytest
from netstats.pytest_plugin import NetstatsBlocked

@pytest.mark.netstats(allow_hosts=["10.0.0.0/8"])
def test_blocked(echo):
    with pytest.raises(ConnectionRefusedError) as info:
        echo.talk(10)
    assert isinstance(info.value, NetstatsBlocked)
    time.sleep(0.3)
    assert echo.accepted == 0, "the server saw the connection"
    print("BLOCKED WITH", info.value)

@pytest.mark.netstats(allow_hosts=["localhost"])
def test_allowed_goes_through(echo):
    echo.talk(10)

def test_unmarked_is_not_blocked(echo):
    echo.talk(10)
"""


@pytest.mark.parametrize("report", [[], ["--netstats"]], ids=["per-test", "session"])
def test_block_refuses_the_connect_before_any_byte_leaves(suite: pytest.Pytester, report: list[str]) -> None:
    suite.makepyfile(test_d=BLOCK)
    result = run(suite, "--netstats-block", "-rA", *report)
    assert outcomes(result) == {
        # the body passed (refused, and the server saw nothing); the attempt itself breaks the budget
        ("test_d.py::test_blocked", "FAILED"),
        ("test_d.py::test_allowed_goes_through", "PASSED"),
        ("test_d.py::test_unmarked_is_not_blocked", "PASSED"),
    }
    result.stdout.fnmatch_lines(
        [
            "*netstats: test_d.py::test_blocked broke its network budget",
            "  host not in allow_hosts=['10.0.0.0/8']:",
            "    127.0.0.1:* (NetstatsBlocked) tx=0 rx=0 opened at test_d.py:* in test_blocked",
        ]
    )
    assert re.search(
        r"BLOCKED WITH \[Errno 111\] netstats --netstats-block: connect to 127\.0\.0\.1:\d+ refused: "
        r"not in allow_hosts=\['10\.0\.0\.0/8'\] of test_d\.py::test_blocked",
        result.stdout.str(),
    )


def test_without_block_the_connect_happens_and_the_verdict_is_the_same(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_d="""
        import pytest

        @pytest.mark.netstats(allow_hosts=["10.0.0.0/8"])
        def test_reaches(echo):
            echo.talk(10)
            assert echo.accepted == 1
        """
    )
    result = run(suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["  host not in allow_hosts=['10.0.0.0/8']:", "    127.0.0.1:* tx=10 rx=10 *"]
    )


# ---- the fixture ------------------------------------------------------------------------


def test_netstats_fixture_is_the_tests_capture(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import netstats as ns

        @pytest.fixture
        def warm_up(echo):
            echo.talk(5)

        def test_counts(echo, warm_up, netstats):
            assert netstats.active
            sock = echo.connect()
            echo.talk(100, sock=sock)
            assert ns.mark(sock, "first") == {"rx": 100, "tx": 100, "elapsed": pytest.approx(0, abs=5)}
            echo.talk(20, sock=sock)
            sock.close()
            assert (netstats.tx, netstats.rx, netstats.count) == (125, 125, 2)  # warm_up included
            assert [c.marks[0]["name"] for c in netstats.connections if c.marks] == ["first"]

        def test_getfixturevalue(echo, request):
            cap = request.getfixturevalue("netstats")
            echo.talk(7)
            assert cap.tx == 7

        def test_fresh_per_test(netstats):
            assert netstats.count == 0
        """
    )
    run(suite).assert_outcomes(passed=3)


# ---- xdist ------------------------------------------------------------------------------


def test_xdist_gives_the_same_summary_json_and_verdicts(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_b=BUDGETS,
        test_e="""
        import pytest

        @pytest.mark.parametrize("n", [1, 10, 100, 1000, 10000])
        def test_n(echo, n):
            echo.talk(n)
        """,
    )
    one = run(suite, "-p", "no:xdist", "--netstats", "--netstats-json", "one.json", "-rA")
    two = run(suite, "-n", "2", "--netstats", "--netstats-json", "two.json", "-rA")
    assert "2 workers" in two.stdout.str()
    assert outcomes(two) == outcomes(one)
    assert len(outcomes(one)) == 12  # 11 tests, one with an error at teardown
    assert summary(two) == summary(one)
    assert summary(one)[0] == ("9.8 KiB", "9.8 KiB", 1, "test_e.py::test_n[10000]")

    def figures(name: str) -> list[tuple[str, int, int, int]]:
        rows = json.loads((suite.path / name).read_text())["rows"]
        return [(r["name"], r["tx"], r["rx"], len(r["connections"])) for r in rows]

    assert figures("two.json") == figures("one.json")


# ---- TLS: the summary and the JSON show what TLS added on the wire ----------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="wire bytes come from Linux's TCP_INFO")
def test_a_tls_test_shows_its_overhead_and_a_plain_one_none(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_t="""
        import socket, ssl, threading
        import trustme

        def tls_echo(n):
            ca = trustme.CA()
            server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert("localhost").configure_cert(server_ctx)
            client_ctx = ssl.create_default_context()
            ca.configure_trust(client_ctx)
            listener = socket.create_server(("127.0.0.1", 0))

            def serve():
                raw, _ = listener.accept()
                with server_ctx.wrap_socket(raw, server_side=True) as s:
                    got = 0
                    while got < n:
                        data = s.recv(65536)
                        got += len(data)
                        s.sendall(data)

            t = threading.Thread(target=serve, daemon=True)
            t.start()
            raw = socket.create_connection(listener.getsockname(), timeout=10)
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"t" * n)
                got = 0
                while got < n:
                    got += len(s.recv(65536))
            t.join(10)
            listener.close()

        def test_tls():
            tls_echo(5000)

        def test_plain(echo):
            echo.talk(5000)
        """
    )
    result = run(suite, "--netstats", "--netstats-json", "out.json")
    result.assert_outcomes(passed=2)
    rows = {row["name"]: row for row in json.loads((suite.path / "out.json").read_text())["rows"]}
    tls, plain = rows["test_t.py::test_tls"], rows["test_t.py::test_plain"]
    assert (tls["tx"], tls["rx"], plain["tx"], plain["rx"]) == (5000, 5000, 5000, 5000)  # known sizes
    assert plain["tls_overhead"] == 0
    assert tls["tls_overhead"] > 1000  # a TLS 1.3 handshake with a certificate alone is larger
    assert tls["connections"][0]["tls"] == "TLSv1.3"
    overhead = f"{tls['tls_overhead'] / 1024:.1f} KiB"
    result.stdout.fnmatch_lines(
        ["*4.9 KiB*4.9 KiB*-*1*test_plain*", f"*4.9 KiB*4.9 KiB*{overhead}*1*test_t.py::test_tls*"]
    )


def test_a_long_test_id_is_clipped_in_the_summary_not_every_row_widened(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_a="""
        import pytest

        @pytest.mark.parametrize("case", [1], ids=["x" * 1200])
        def test_long(echo, case):
            echo.talk(10)

        def test_short(echo):
            echo.talk(20)
        """
    )
    result = run(suite, "--netstats")
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "netstats: network use per test" in line)
    section = lines[start + 1 : start + 5]  # the header, two rows, the total
    assert max(len(line) for line in section) < 160, "\n".join(section)
    short, long = summary(result)  # busiest first
    assert short == ("20 B", "20 B", 1, "test_a.py::test_short")
    assert long[:3] == ("10 B", "10 B", 1) and long[3].startswith("…") and long[3].endswith("xxx]")
