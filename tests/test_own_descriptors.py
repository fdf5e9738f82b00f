"""netstats' own descriptors (the census's sock_diag feed, the query socket) when the program
closes every descriptor it did not open, as daemonizing code does (`os.closerange(3, 256)`): the
numbers netstats held are then the program's new sockets. netstats must never read, write or
close them, and stopping must not hang.

The program runs as a subprocess (closerange inside pytest's process would close pytest's own
descriptors); the server that sends it PAYLOAD bytes per connection runs here.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import MODES, drain

from netstats import _diag, _owned

PAYLOAD = bytes(range(256)) * 781 + bytes(64)  # 200,000 bytes, each position's value known
REQUEST = b"go\n"
FRESH = 3  # connections the program opens after closerange: they take the freed numbers
TIMEOUT = 30  # seconds: a hang detector, not a speed test
TESTS = os.path.dirname(os.path.abspath(__file__))
LOG_LINE = "its {} descriptor was closed by the program"

PROGRAM = """\
import _socket, json, logging, os, socket, sys, threading, time

port, mode, payload_size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
idle = threading.Event()
threading.Thread(target=idle.wait, daemon=True).start()  # another thread: a close asks sock_diag


def fetch(make=socket.create_connection):
    s = make(("127.0.0.1", port))
    s.sendall(b"go\\n")
    return s


def read_all(s):  # to the end; s stays open
    got = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def stock(address):  # a connection no Python socket call makes (C code): the census finds it
    s = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(address)
    return s


cap = None
if mode != "run":
    sys.path.insert(0, {tests!r})
    from helpers import capture_in

    cap = capture_in(mode)
first = fetch()
read_all(first)
first.close()  # netstats' query socket is made and used (the close asks sock_diag)
found = fetch(stock)
time.sleep(0.6)  # the census sweeps a few times and finds `found`: its feed awaits its end
os.closerange(3, 256)  # as daemonizing code does: netstats' own descriptors too
fresh = [fetch() for _ in range({fresh})]  # they take the numbers netstats held
ports = [s.getsockname()[1] for s in fresh]
bodies = [read_all(s) for s in fresh]  # (each stays open, at its end, until the program exits)
time.sleep(0.6)  # the census sweeps again, sees `found` gone and asks sock_diag
stopped = None
if cap is not None:
    began = time.monotonic()
    cap.stop()
    stopped = time.monotonic() - began
    rx = {{c.local[1]: c.rx for c in cap.connections if c.local and c.local[1] in ports}}
else:
    rx = {{}}
print(json.dumps({{"sizes": [len(b) for b in bodies], "whole": all(b == bodies[0] for b in bodies),
                   "ports": ports, "rx": rx, "stop": stopped}}))
sys.exit(7)
"""


@pytest.fixture
def sender() -> Iterator[tuple[int, list[int]]]:
    """A loopback server: each connection's request line is answered with PAYLOAD, then closed.
    Yields its port and what it read per connection (its own count)."""
    server = socket.create_server(("127.0.0.1", 0))
    read: list[int] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            got = b""
            while not got.endswith(b"\n"):
                chunk = conn.recv(64)
                if not chunk:
                    break
                got += chunk
            read.append(len(got))
            conn.sendall(PAYLOAD)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], read
    server.close()


def write_program(folder: Path) -> Path:
    path = folder / "daemonish.py"
    path.write_text(PROGRAM.format(tests=TESTS, fresh=FRESH))
    return path


def assert_one_log_line_per_descriptor(stderr: str) -> None:
    """netstats saw each of its descriptors closed, and said so once."""
    for what in ("sock_diag query", "destroy feed"):
        assert stderr.count(LOG_LINE.format(what)) == 1, stderr


def assert_every_byte_arrived(result: dict[str, object]) -> None:
    assert result["sizes"] == [len(PAYLOAD)] * FRESH
    assert result["whole"]


@pytest.mark.parametrize("mode", MODES)
def test_closerange_of_netstats_descriptors_takes_no_byte_of_the_program_and_stop_returns(
    tmp_path, sender, mode
):
    port, read = sender
    program = write_program(tmp_path)
    done = subprocess.run(
        [sys.executable, str(program), str(port), mode, str(len(PAYLOAD))],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 7, done.stderr
    result = json.loads(done.stdout)
    assert_every_byte_arrived(result)
    assert result["stop"] < 5, result  # a hang detector: stop() returns at once
    # The fresh connections are counted (the wrappers need no census): the server's payload.
    assert sorted(result["rx"].values()) == [len(PAYLOAD)] * FRESH, result
    assert "Traceback" not in done.stderr, done.stderr
    assert_one_log_line_per_descriptor(done.stderr)
    assert read == [len(REQUEST)] * (FRESH + 2)  # the server read every request whole


def test_closerange_under_netstats_run_keeps_the_exit_code_every_byte_and_the_report(tmp_path, sender):
    port, read = sender
    program = write_program(tmp_path)
    report = tmp_path / "R.json"
    done = subprocess.run(
        [sys.executable, "-m", "netstats", "run", "--format", "json", "-o", str(report)]
        + [str(program), str(port), "run", str(len(PAYLOAD))],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert done.returncode == 7, done.stderr
    result = json.loads(done.stdout)
    assert_every_byte_arrived(result)
    assert "Traceback" not in done.stderr and "Errno" not in done.stderr, done.stderr
    assert_one_log_line_per_descriptor(done.stderr)
    run = json.loads(report.read_text())
    assert run["exit_code"] == 7
    fresh = [c for c in run["connections"] if c["local"] and c["local"][1] in result["ports"]]
    assert sorted(c["rx"] for c in fresh) == [len(PAYLOAD)] * FRESH, fresh
    assert sorted(c["tx"] for c in fresh) == [len(REQUEST)] * FRESH, fresh
    assert read == [len(REQUEST)] * (FRESH + 2)


@pytest.mark.parametrize("end", ["use", "close", "garbage collection"])
def test_a_number_of_netstats_that_now_names_the_programs_socket_is_let_go_not_closed(end, caplog):
    """dup2 puts the program's socket on the number of one of netstats' own sockets in one step,
    as a close and an open that reuses the number do: netstats' socket object lets the number go
    (at its next use, at close(), at garbage collection) and the program's socket works on."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    own = _diag._netlink("destroy feed")
    number = own.fileno()
    os.dup2(client.fileno(), number)  # the program's socket, now also on netstats' number
    with caplog.at_level(logging.WARNING, logger="netstats"):
        if end == "use":
            assert not own.ours() and not own.ours()
        elif end == "close":
            own.close()
        else:
            del own
            gc.collect()
    assert _owned.identity(number) == _owned.of_socket(client)  # still open, still the program's
    logged = [r for r in caplog.records if "destroy feed descriptor was closed" in r.getMessage()]
    assert len(logged) == (0 if end == "garbage collection" else 1)
    accepted.sendall(b"x" * 1000)
    assert drain(client, 1000) == b"x" * 1000
    os.close(number)
    for s in (client, accepted, server):
        s.close()
