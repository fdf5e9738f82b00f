"""The live views: `netstats run --live` and `netstats top PID`, drawn for real in a tmux pane
and read back with capture-pane; `top --once --format json` against processes netstats is not
in (a bash peer talking through /dev/tcp, the Python echo peer), checked against their counts.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest

import netstats

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's figures: Linux")

TIMEOUT = 60.0
wait_for = functools.partial(helpers.wait_for, timeout=TIMEOUT, every=0.1)
NETSTATS = [sys.executable, "-m", "netstats"]


class Pane:
    """A tmux server of the test's own (its own socket) with one pane running a command."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.socket = str(cwd / f"tmux-{uuid.uuid4().hex[:8]}")  # in the test's folder: removed with it
        # The command starts once the pane has its size (a new window may start at 80x24).
        script = f"read _; clear; {shlex.join(command)}; echo exit=$?; sleep 120"
        self._tmux("new-session", "-d", "-x", "160", "-y", "40", "-c", str(cwd), script)
        self._tmux("resize-window", "-x", "160", "-y", "40")
        wait_for(
            lambda: self._tmux("display-message", "-p", "#{pane_width}x#{pane_height}").strip() == "160x40"
        )
        self._tmux("send-keys", "Enter")

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def text(self) -> str:
        return self._tmux("capture-pane", "-p")

    def wait(self, predicate: Callable[[str], Any], what: str) -> str:
        seen = [""]

        def look() -> Any:
            seen[0] = self.text()
            return predicate(seen[0])

        try:
            wait_for(look, what=what)
        except AssertionError:
            raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{seen[0]}") from None
        return seen[0]

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Callable[[list[str]], Pane]]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing (.ci/run installs it)")
        pytest.skip("tmux not installed (Debian 'tmux'; CI installs it)")
    panes: list[Pane] = []

    def start(command: list[str]) -> Pane:
        panes.append(Pane(command, tmp_path))
        return panes[-1]

    yield start
    for p in panes:
        p.close()


# ---- a process netstats is not in: bash talking through /dev/tcp -------------------------


class BashPeer:
    """A bash process connected to a server of the test: it writes `sends` bytes, reads
    `reads` bytes, then holds the connection until told to end (a line on its stdin)."""

    def __init__(self, sends: int, reads: int, close_after: bool = False, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server = socket.create_server((host, 0), family=family)
        self.port = self.server.getsockname()[1]
        self.received = 0  # the server's own count
        self.peer_address: Any = None
        self.ready = threading.Event()
        self._reads, self._sends, self._close_after = reads, sends, close_after
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        script = (
            f"exec 3<>/dev/tcp/{host}/{self.port}; head -c {sends} /dev/zero >&3; "
            f"head -c {reads} <&3 >/dev/null; echo ready; read _; exec 3>&-"
        )
        self.proc = subprocess.Popen(
            ["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        assert self.ready.wait(TIMEOUT)

    def _serve(self) -> None:
        conn, self.peer_address = self.server.accept()
        with conn:
            while self.received < self._sends:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                self.received += len(chunk)
            conn.sendall(b"y" * self._reads)
            if self._close_after:
                conn.shutdown(socket.SHUT_WR)  # the FIN reaches bash: its socket in CLOSE_WAIT
            self.ready.set()
            conn.recv(1)  # until bash closes

    def end(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.proc.wait(TIMEOUT)
        self.proc.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.server.close()


def top_once(pid: int) -> dict[str, Any]:
    done = subprocess.run(
        [*NETSTATS, "top", str(pid), "--once", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("close_after", [False, True], ids=["established", "peer-fin-received"])
def test_top_once_json_gives_a_bash_process_wire_bytes_as_it_counted_them(close_after, host):
    if ":" in host and not socket.has_ipv6:
        pytest.skip("no IPv6")
    peer = BashPeer(sends=700, reads=300, close_after=close_after, host=host)
    try:
        assert peer.received == 700  # bash's head wrote 700 bytes; the server read as many
        state = "CLOSE_WAIT" if close_after else "ESTABLISHED"

        def snapshot() -> dict[str, Any] | None:
            shot = top_once(peer.proc.pid)
            return shot if [c["state"] for c in shot["connections"]] == [state] else None

        shot = wait_for(snapshot, what=f"one connection in {state}")
        (conn,) = shot["connections"]
        assert shot["pid"] == peer.proc.pid
        assert conn["remote"] == [host, peer.port]
        assert tuple(conn["local"]) == peer.peer_address[:2]
        assert conn["side"] == "client"
        assert conn["wire_tx"] == 700
        assert conn["wire_rx"] == 300  # the peer's FIN, when it came, not counted
        assert conn["rtt"] is not None and conn["rtt"] > 0
        assert conn["retransmits"] == 0
        assert conn["rx_rate"] is None and conn["tx_rate"] is None  # one reading: no rate
    finally:
        peer.end()


def test_top_once_json_gives_a_python_server_netstats_is_not_in_its_own_counts(peer):
    echo = peer("echo")
    with socket.create_connection(echo.address) as client:
        client.sendall(b"z" * 900)
        got = 0
        while got < 900:
            got += len(client.recv(65536))
        counts = wait_for(lambda: [r for r in echo.counts() if r["tx"] == 900], what="the echo peer's counts")
        shot = top_once(echo.proc.pid)
        (conn,) = shot["connections"]  # its listener is not a connection
        assert conn["side"] == "server"
        assert conn["remote"] == list(client.getsockname())
        assert conn["local"] == ["127.0.0.1", echo.port]
        assert (conn["wire_rx"], conn["wire_tx"]) == (counts[0]["rx"], counts[0]["tx"]) == (900, 900)


def test_top_format_json_without_once_is_refused_in_one_line():
    done = subprocess.run(
        [*NETSTATS, "top", str(os.getpid()), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert done.stderr == "netstats top: error: --format json is for one snapshot: add --once\n"


def test_top_of_a_pid_that_does_not_exist_says_so_in_one_line():
    gone = subprocess.Popen(["true"])
    gone.wait()
    done = subprocess.run(
        [*NETSTATS, "top", str(gone.pid), "--once"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr == f"netstats top: no process {gone.pid}\n"


def test_top_of_another_users_process_says_so_in_one_line():
    # Root sees every process: netstats then drops to nobody (65534), netstats loaded first (its
    # files may be root's), and watches this process; anyone else watches PID 1, root's.
    target = os.getpid() if os.getuid() == 0 else 1
    code = (
        "import os, sys, netstats.__main__, netstats._top, netstats._live, netstats._errors\n"
        "netstats.__main__._parser()\n"  # argparse's own late imports, while they can be read
        "if os.getuid() == 0:\n    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "sys.exit(netstats.__main__.main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "top", str(target), "--once"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"netstats top: process {target} is not yours"), done.stderr


def test_top_draws_a_bash_process_connections_until_it_ends(pane):
    peer = BashPeer(sends=700, reads=300)
    try:
        view = pane([*NETSTATS, "top", str(peer.proc.pid)])

        def row(text: str) -> bool:
            line = next((x for x in text.splitlines() if f"127.0.0.1:{peer.port}" in x), "")
            return "ESTABLISHED" in line and re.search(r"\b300 B\b.*\b700 B\b", line) is not None

        text = view.wait(row, "the bash connection's row: wire rx 300 B, wire tx 700 B")
        assert f"netstats top {peer.proc.pid}: 1 TCP connection, " in text
        view.wait(lambda t: "B/s" in t, "a rate once two readings were taken")
    finally:
        peer.end()
    view.wait(
        lambda t: f"process {peer.proc.pid} ended" in t and "exit=0" in t, "top ending with the process"
    )


PROGRAM = """\
import os, socket, sys, time
{setup}
port, go = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"x" * 700)
got = 0
while got < 700:
    got += len(s.recv(65536))
print("the program says hello", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.05)
s.close()
"""
MODES = {
    "kernel-counted": "",
    # a read/write callback on a capture of the program's own: the wrapped mode
    "wrapped": "import netstats\nnetstats.capture(lambda event, conn, nbytes: None)",
}


@pytest.mark.parametrize("mode", MODES)
def test_run_live_draws_the_connection_with_its_bytes_then_the_report(pane, peer, tmp_path, mode):
    echo = peer("echo")
    program = tmp_path / "prog.py"
    program.write_text(PROGRAM.format(setup=MODES[mode]))
    go = tmp_path / "go"
    view = pane([*NETSTATS, "run", "--live", str(program), str(echo.port), str(go)])

    def row(text: str) -> bool:
        line = next((x for x in text.splitlines() if f"127.0.0.1:{echo.port}" in x), "")
        return len(re.findall(r"\b700 B\b", line)) == 4  # rx, tx, wire rx, wire tx

    try:
        text = view.wait(row, "the connection's row with 700 B each way")
        assert "the program says hello" in text  # the program's print, above the table
        assert "netstats run --live   " in text and "1 open, 1 in all" in text
        wait_for(lambda: echo.counts()[0]["tx"] == 700, what="the peer's count of what it echoed")
        assert echo.counts()[0]["rx"] == 700  # the peer's own count
    finally:
        go.write_text("")
    text = view.wait(lambda t: "exit=0" in t, "the program's end")
    assert "netstats run --live   " not in text  # the table is gone, the report is there
    assert re.search(rf"127\.0\.0\.1:{echo.port}\s+700 B\s+700 B", text), text


def parent_of(folder: Path, template: str) -> Path:
    """prog.py, whose child (child.py, from template: 600 bytes each way) does the talking."""
    child = folder / "child.py"
    child.write_text(template.format(setup="").replace("700", "600"))
    program = folder / "prog.py"
    program.write_text(
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, {str(child)!r}, *sys.argv[1:]])\n"
        "sys.exit(child.wait(120))\n"
    )
    return program


def test_run_live_draws_a_python_childs_connection_from_its_snapshots(pane, peer, tmp_path):
    echo = peer("echo")
    program = parent_of(tmp_path, PROGRAM)
    go = tmp_path / "go"
    view = pane([*NETSTATS, "run", "--live", str(program), str(echo.port), str(go)])

    def row(text: str) -> bool:
        line = next((x for x in text.splitlines() if f"127.0.0.1:{echo.port}" in x), "")
        return "(pid " in line and len(re.findall(r"\b600 B\b", line)) == 4

    try:
        text = view.wait(row, "the child's row with 600 B each way")
        assert "1 open in 2 processes, 1 in all" in text
        wait_for(lambda: echo.counts()[0]["tx"] == 600, what="the peer's count of what it echoed")
        assert echo.counts()[0]["rx"] == 600  # the peer's own count
    finally:
        go.write_text("")
    text = view.wait(lambda t: "exit=0" in t, "the program's end")
    assert re.search(rf"127\.0\.0\.1:{echo.port}\s+600 B\s+600 B", text), text


# ---- per interval, as nethogs and tcptop: connections that opened and closed in one ----------

SHORT = """\
import os, socket, sys, time
{setup}
port, go = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 60
for _ in range(3000):  # short connections, each opened and closed well within one refresh
    if os.path.exists(go) or time.monotonic() > deadline:
        break
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"x" * 700)
        got = 0
        while got < 700:
            got += len(s.recv(65536))
    time.sleep(0.02)
"""


def closed_row(port: int, size: str, child: bool = False) -> Callable[[str], bool]:
    """Whether the pane shows a connection to the port as closed, `size` each way (rx, tx,
    wire rx, wire tx), and the title a refresh in which more than one closed."""

    def look(text: str) -> bool:
        rows = [x for x in text.splitlines() if f"127.0.0.1:{port}" in x and " closed " in x]
        rows = [x for x in rows if ("(pid " in x) == child and len(re.findall(rf"\b{size}\b", x)) == 4]
        counts = [int(n) for n in re.findall(r"(\d+) closed since the last refresh", " ".join(text.split()))]
        return bool(rows) and any(n > 1 for n in counts)

    return look


@pytest.mark.parametrize("mode", MODES)
def test_run_live_shows_connections_that_opened_and_closed_between_two_refreshes(pane, peer, tmp_path, mode):
    echo = peer("echo")
    program = tmp_path / "prog.py"
    program.write_text(SHORT.format(setup=MODES[mode]))
    go = tmp_path / "go"
    view = pane([*NETSTATS, "run", "--live", str(program), str(echo.port), str(go)])
    try:
        view.wait(closed_row(echo.port, "700 B"), "a closed connection's row with 700 B each way")
    finally:
        go.write_text("")
    view.wait(lambda t: "exit=0" in t, "the program's end")
    counts = echo.counts()
    assert len(counts) > 1 and all((c["rx"], c["tx"]) == (700, 700) for c in counts)  # the peer's own


def test_run_live_shows_a_childs_connections_that_opened_and_closed_between_two_refreshes(
    pane, peer, tmp_path
):
    echo = peer("echo")
    program = parent_of(tmp_path, SHORT)
    go = tmp_path / "go"
    view = pane([*NETSTATS, "run", "--live", str(program), str(echo.port), str(go)])
    try:
        view.wait(closed_row(echo.port, "600 B", child=True), "the child's closed connection, 600 B each way")
    finally:
        go.write_text("")
    view.wait(lambda t: "exit=0" in t, "the program's end")
    counts = echo.counts()
    assert len(counts) > 1 and all((c["rx"], c["tx"]) == (600, 600) for c in counts)  # the peer's own


def test_run_live_keeps_counting_the_connections_of_a_child_that_ended(pane, peer, tmp_path):
    echo = peer("echo")
    child = tmp_path / "child.py"
    child.write_text(  # three connections, 300 B each way, then it ends at once
        "import socket, sys\n"
        "for _ in range(3):\n"
        "    with socket.create_connection(('127.0.0.1', int(sys.argv[1]))) as s:\n"
        "        s.sendall(b'x' * 300)\n"
        "        got = 0\n"
        "        while got < 300:\n"
        "            got += len(s.recv(65536))\n"
    )
    program = tmp_path / "prog.py"
    program.write_text(
        "import os, subprocess, sys, time\n"
        f"subprocess.run([sys.executable, {str(child)!r}, sys.argv[1]], check=True, timeout=60)\n"
        "deadline = time.monotonic() + 60\n"
        "while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
    )
    go = tmp_path / "go"
    view = pane([*NETSTATS, "run", "--live", str(program), str(echo.port), str(go)])
    try:
        # the child's three, in all and in the totals, after it ended (one process left)
        text = view.wait(lambda t: "0 open, 3 in all" in " ".join(t.split()), "the ended child's connections")
        assert "rx 900 B tx 900 B" in " ".join(text.split()), text
    finally:
        go.write_text("")
    view.wait(lambda t: "exit=0" in t, "the program's end")
    assert [(c["rx"], c["tx"]) for c in echo.counts()] == [(300, 300)] * 3  # the peer's own


def test_each_refresh_shows_what_every_connection_moved_since_the_last_closed_ones_included(peer):
    from netstats import _live

    echo = peer("echo")
    with netstats.capture() as cap:
        sampler, rows = _live.Sampler(cap), _live.Tracker()
        first = sampler.sample()
        rows.take(first, now=0.0)
        held = socket.create_connection(echo.address)
        helpers.roundtrip(held, 1000)
        with socket.create_connection(echo.address) as short:  # opened and closed in the interval
            helpers.roundtrip(short, 300)
        second = sampler.sample()
        rows.take(second, now=1.0)
        span = second["time"] - first["time"]
        shown = sorted(rows.rows(now=1.0), key=lambda r: r.state)
        assert [(r.state, r.rx, r.tx) for r in shown] == [("closed", 300, 300), ("open", 1000, 1000)]
        assert [(r.rx_rate, r.tx_rate) for r in shown] == [
            (300 / span, 300 / span),
            (1000 / span, 1000 / span),
        ]
        assert (rows.open, rows.closed_now, rows.count) == (1, 1, 2)

        helpers.roundtrip(held, 200)  # the next interval: the held one moves 200 more, the short none
        third = sampler.sample()
        rows.take(third, now=2.0)
        span = third["time"] - second["time"]
        shown = sorted(rows.rows(now=2.0), key=lambda r: r.state)
        assert [(r.state, r.rx, r.rx_rate, r.tx_rate) for r in shown] == [
            ("closed", 300, 0.0, 0.0),  # still shown, a while: nothing moves on it now
            ("open", 1200, 200 / span, 200 / span),
        ]
        assert rows.closed_now == 0
        assert [r.state for r in rows.rows(now=1.0 + _live.LINGER)] == ["open"]  # gone after LINGER
        held.close()
    sampler.close()
    assert [(c["rx"], c["tx"]) for c in echo.counts()] == [(1000 + 200, 1200), (300, 300)]  # the peer's own


class Server:
    """Accepts connections, reads `reads` bytes of each, writes `writes`, and counts them; then
    closes each as its client does, or (`hold`) keeps it open until the test ends."""

    def __init__(self, reads: int, writes: int, hold: bool) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.counts: list[tuple[int, int]] = []  # (read, written) per connection served
        self.held: list[socket.socket] = []
        self._reads, self._writes, self._hold = reads, writes, hold
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        for _ in range(1000):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by the test
            got = 0
            while got < self._reads and (chunk := conn.recv(65536)):
                got += len(chunk)
            conn.sendall(b"y" * self._writes)
            self.counts.append((got, self._writes))
            conn.recv(1)  # until the client closes
            if self._hold:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


# The sizes of a closed socket, and its rates in the interval it closed in: final, told by the
# kernel as it destroyed the socket; or, while the socket lingers (its peer holds its side
# open: FIN_WAIT2), as last seen, more perhaps unseen ("+?"), the rates not known.
FINAL = r"closed\W+[\d.]+ \w*B/s\W+[\d.]+ \w*B/s\s+│\s+300 B\s+│\s+700 B\s+│"
AS_LAST_SEEN = r"closed\W+\?\W+\?\W+300 B\+\?\W+700 B\+\?"


@pytest.mark.parametrize("hold, row", [(False, FINAL), (True, AS_LAST_SEEN)], ids=["destroyed", "lingering"])
def test_top_lists_a_connection_that_closed_since_the_last_refresh(pane, hold, row):
    server = Server(reads=700, writes=300, hold=hold)
    # A client (no netstats in it) opens a connection, moves 700 B out and 300 B in, holds it
    # past a refresh, closes it and opens the next (until told): one is always closing while
    # top watches. Lingering, its sockets keep FIN_WAIT2 as whole sockets (TCP_LINGER2 beyond
    # the kernel's 60 s: else the kernel may make one a time-wait stub at once, and tell its end).
    script = textwrap.dedent(
        f"""\
        import select, socket, sys
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", {server.port}))
            if {hold}:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_LINGER2, 120)
            s.sendall(bytes(700))
            got = 0
            while got < 300:
                got += len(s.recv(300 - got))
            if select.select([sys.stdin], [], [], 1.5)[0]:
                break
            s.close()
        """
    )
    client = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, text=True)
    try:
        view = pane([*NETSTATS, "top", str(client.pid)])

        def closed(text: str) -> bool:
            lines = [x for x in text.splitlines() if f"127.0.0.1:{server.port}" in x and "closed" in x]
            return any(re.search(row, line) for line in lines)

        text = view.wait(closed, f"a closed connection's row: {row}")
        assert re.search(r"TCP connections?, \d+ closed since the last refresh", text), text
        assert all(c == (700, 300) for c in server.counts) and server.counts  # the server's own count
    finally:
        assert client.stdin is not None
        client.stdin.write("\n")
        client.stdin.close()
        client.wait(TIMEOUT)
        server.close()


def test_live_without_rich_names_the_extra_in_one_line(tmp_path):
    program = tmp_path / "prog.py"
    ran = tmp_path / "ran"
    program.write_text(f"open({str(ran)!r}, 'w').close()\n")
    hide = (  # rich made unimportable, as if the extra were not installed
        "import sys; sys.modules['rich'] = None; "
        "from netstats.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide, "run", "--live", str(program)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert done.stderr == "netstats run: --live needs the rich package: pip install 'netstats[live]'\n"
    assert not ran.exists()
    done = subprocess.run(
        [sys.executable, "-c", hide, "top", str(os.getpid())], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "pip install 'netstats[live]'" in done.stderr
    done = subprocess.run(
        [sys.executable, "-c", hide, "top", str(os.getpid()), "--once"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr  # one snapshot needs no terminal library
    assert done.stdout.startswith(f"netstats top {os.getpid()}: ")


def test_run_live_without_a_terminal_says_so_and_runs_the_program(peer, tmp_path):
    echo = peer("echo")
    program = tmp_path / "prog.py"
    program.write_text(PROGRAM.format(setup=""))
    go = tmp_path / "go"
    go.write_text("")
    done = subprocess.run(
        [*NETSTATS, "run", "--live", str(program), str(echo.port), str(go)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the program says hello\n"
    first, *rest = done.stderr.splitlines()
    assert first == "netstats run: --live draws on a terminal and stderr is not one; running without it"
    assert re.search(rf"127\.0\.0\.1:{echo.port}\s+700 B\s+700 B", done.stderr), done.stderr


# ---- names are data: never read as rich markup, never sent to the terminal raw ---------------

TLS_PROGRAM = """\
import os, socket, ssl, sys, time
port, go, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
held = []
for name in names:  # a TLS connection to the echo peer per name, that name as its SNI
    s = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=name)
    s.sendall(b"x" * 300)
    got = 0
    while got < 300:
        got += len(s.recv(65536))
    held.append(s)
print("connected", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(5)
"""


def run_live_with_names(
    pane: Callable[[list[str]], Pane], peer: Any, tmp_path: Path, *names: str
) -> tuple[str, str, int]:
    """A program under `run --live` holding a TLS connection per name (its server_hostname),
    its last argument the name too: (the pane while the table is up, after the end, the port)."""
    echo = peer("echo", tls=True)
    program = tmp_path / "tls.py"
    program.write_text(TLS_PROGRAM)
    go = tmp_path / "go"
    view = pane([*NETSTATS, "run", "--live", str(program), str(echo.port), str(go), *names])
    try:
        live = view.wait(lambda t: t.count(f":{echo.port}") >= len(names), "a row per connection")
    finally:
        go.write_text("")
    return live, view.wait(lambda t: "exit=" in t, "the program's end"), echo.port


@pytest.mark.parametrize("name", ["[/]", "[link=https://x]click-me[/link]", "[blink red]:smile:"])
def test_run_live_shows_a_host_and_argv_that_look_like_rich_markup_as_they_are(pane, peer, tmp_path, name):
    live, end, port = run_live_with_names(pane, peer, tmp_path, name)
    (row,) = [line for line in live.splitlines() if f"127.0.0.1:{port}" in line]
    assert f" {name} " in row, live  # the host as it is: no link, no style, no emoji
    assert " ".join(live.split()).count(name) == 2, live  # and the argv in the title (wrapped)
    assert "exit=5" in end, end  # the program's exit code, no MarkupError
    assert "MarkupError" not in end and "Traceback" not in end
    (row,) = [line for line in end.splitlines() if f":{port}" in line]
    assert name in row, end  # the report, after the view


def test_run_live_and_its_report_show_control_characters_of_a_host_escaped(pane, peer, tmp_path):
    name = "evil\x1b[31mred\x1b]0;title\x07"  # recolours, then retitles the terminal, if sent raw
    live, end, port = run_live_with_names(pane, peer, tmp_path, name)
    escaped = "evil\\x1b[31mred\\x1b]0;title\\x07"
    (row,) = [line for line in live.splitlines() if f"127.0.0.1:{port}" in line]
    assert f" {escaped} " in row, live
    assert "exit=5" in end, end
    (row,) = [line for line in end.splitlines() if f":{port}" in line]
    assert escaped in row, end


@pytest.mark.parametrize("pid", ["99999999999999999999", "0", "-1", "2147483648", "12ab"])
def test_top_of_what_is_not_a_process_id_is_one_line_and_exit_2(pid):
    done = subprocess.run([*NETSTATS, "top", pid, "--once"], capture_output=True, text=True, timeout=TIMEOUT)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"netstats top: error: argument pid: not a process id: {pid!r} (see --help)\n"


def test_top_of_a_zombie_of_ones_own_says_it_has_ended():
    # As nobody when root (a zombie of the user's own, whoever runs the suite): a child that
    # ended, not reaped, then `top` of it.
    code = (
        "import os, subprocess, sys, time\n"
        "import netstats.__main__, netstats._top, netstats._live, netstats._errors\n"
        "netstats.__main__._parser()\n"  # argparse's own late imports, while they can be read
        "if os.getuid() == 0:\n    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "child = subprocess.Popen(['true'])\n"
        "while open(f'/proc/{child.pid}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':\n"
        "    time.sleep(0.01)\n"
        "print(child.pid, flush=True)\n"
        "sys.exit(netstats.__main__.main(['top', str(child.pid), '--once']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    pid = int(done.stdout.split()[0])
    assert done.returncode == 1
    assert done.stderr == f"netstats top: process {pid} has ended (a zombie: its parent has not reaped it)\n"
