"""Nothing lost, however the processes of a run end: `netstats run` as services are stopped.

Each test writes a program into tmp_path whose traffic goes to peers the test started (echo:
the peer counts every byte itself), runs it under `python -m netstats run`, ends it or its
children the way real services end (SIGKILL, a signal's default action, C exit(), a fork
without Python's fork hooks, SIGTERM/SIGHUP/SIGINT), and checks the saved report against the
peers' counts. Counting tests run in both of netstats' ways of counting: kernel-counted (a
plain client) and wrapped (traffic under `netstats.tag()`, which the wrappers count).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

TIMEOUT = 60
MODES = ("kernel", "wrapped")

# On top of every program: talk(port, n) sends n bytes to an echo peer and reads them back,
# on one connection, closed (or left open, keep=True); under "wrapped", inside netstats.tag().
TALK = """\
import contextlib, os, socket, sys, time

MODE = os.environ["TEST_MODE"]


def scope():
    if MODE == "wrapped":
        import netstats
        return netstats.tag(test="lifecycle")
    return contextlib.nullcontext()


def talk(port, n, keep=False):
    s = socket.create_connection(("127.0.0.1", port))
    with scope():
        s.sendall(b"x" * n)
        got = 0
        while got < n:
            chunk = s.recv(65536)
            assert chunk, "the echo peer closed early"
            got += len(chunk)
    if keep:
        return s
    s.close()
"""


def write_program(tmp_path: Path, source: str, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.write_text(TALK + "\n\n" + textwrap.dedent(source), encoding="utf-8")
    return path


def environment(tmp_path: Path, mode: str) -> dict[str, str]:
    """The test's own TMPDIR (the run's folder goes there: checked to be gone at the end)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "TEST_MODE": mode}


def start(tmp_path: Path, mode: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "netstats", "run", *args],
        cwd=tmp_path,
        env=environment(tmp_path, mode),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def report_of(path: Path, timeout: float = 20.0) -> dict[str, Any]:
    """The saved report, once it is there (a witness writes it a moment after a run dies)."""
    wait_for(path.exists, timeout, f"{path} written")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def echoed(peer: Any, n: int) -> list[dict[str, Any]]:
    """The echo peer's own records of connections that moved n bytes each way."""
    return [r for r in peer.counts() if r["rx"] == n and r["tx"] == n]


def to_port(run: dict[str, Any], port: int) -> list[dict[str, Any]]:
    return [c for c in run["connections"] if c["remote"] and c["remote"][1] == port]


def run_folder_gone(tmp_path: Path) -> bool:
    return not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("netstats-run-")]


@pytest.mark.parametrize("fork", ["os.fork", "C fork"])
def test_a_forked_childs_short_c_level_connection_is_found(tmp_path, peer, fork):
    """A child forked with or without Python's fork hooks (uWSGI forks in C) has its own census:
    a connection made by C code (libc's socket calls), open about a second, is in the report
    with the child's pid and the peer's byte counts as its wire bytes."""
    echo = peer("echo")
    n = 30_000
    write_program(
        tmp_path,
        """
        import ctypes, struct
        libc = ctypes.CDLL(None, use_errno=True)
        port, how = int(sys.argv[1]), sys.argv[2]

        def c_connection(n):
            fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
            address = struct.pack("=H", socket.AF_INET) + struct.pack(">H", port)
            address += socket.inet_aton("127.0.0.1") + bytes(8)
            assert libc.connect(fd, address, len(address)) == 0, ctypes.get_errno()
            out, back = b"x" * n, ctypes.create_string_buffer(65536)
            sent = got = 0
            while sent < n:
                sent += libc.send(fd, out[sent:], n - sent, 0)
            while got < n:
                got += libc.recv(fd, back, 65536, 0)
            time.sleep(1.0)  # open a second: the census sweeps several times meanwhile
            libc.close(fd)

        pid = os.fork() if how == "os.fork" else ctypes.PyDLL(None).fork()
        if pid == 0:
            if how == "C fork":
                talk(port, 10)  # the first connection netstats sees here: the fork is noticed
            c_connection(int(sys.argv[3]))
            time.sleep(0.5)  # the census hears of its end
            print(os.getpid(), flush=True)
            sys.exit(0)
        os.waitpid(pid, 0)
        """,
    )
    out = tmp_path / "r.json"
    proc = start(
        tmp_path, "kernel", "--format", "json", "-o", str(out), "prog.py", str(echo.port), fork, str(n)
    )
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    child = int(stdout.split()[-1])
    assert len(echoed(echo, n)) == 1
    found = [c for c in to_port(report_of(out), echo.port) if c["source"] == "kernel"]
    assert [(c["pid"], c["wire_tx"], c["wire_rx"]) for c in found] == [(child, n, n)]


@pytest.mark.parametrize("mode", MODES)
def test_a_child_killed_by_sigkill_loses_at_most_its_last_interval(tmp_path, peer, mode):
    """A child killed by SIGKILL: its closed connections are in the report, exact; the one it
    still had open shows the figures it had (no byte moved in its last second), marked as left
    open by a process that died; the report says the process was lost."""
    echo = peer("echo")
    write_program(
        tmp_path,
        """
        import subprocess
        port = int(sys.argv[1])
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(port)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # more than a journal interval since its last byte
        child.kill()
        child.wait()
        print(child.pid)
        """.replace(
            "CHILD",
            repr(
                TALK + "\nport = int(sys.argv[1])\ntalk(port, 1000)\ntalk(port, 2000)\n"
                "kept = talk(port, 3000, keep=True)\nprint('ready', flush=True)\n"
                "time.sleep(60)\n"
            ),
        ),
    )
    out = tmp_path / "r.json"
    proc = start(tmp_path, mode, "--format", "json", "-o", str(out), "prog.py", str(echo.port))
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    child = int(stdout.split()[-1])
    run = report_of(out)
    assert {"pid": child, "ended": "lost"}.items() <= next(
        p for p in run["processes"] if p["pid"] == child
    ).items()
    conns = sorted(to_port(run, echo.port), key=lambda c: c["id"])
    truth = [(r["rx"], r["tx"]) for r in echo.counts()]
    assert (
        sorted((c["tx"], c["rx"]) for c in conns)
        == sorted(truth)
        == [(1000, 1000), (2000, 2000), (3000, 3000)]
    )
    assert [c.get("unfinished") for c in conns] == [None, None, "process lost"]
    assert run_folder_gone(tmp_path)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ending", ["os._exit", "SIGKILL"])
def test_the_runs_own_process_dying_below_python_still_gets_its_report(tmp_path, peer, mode, ending):
    """The run's own process ends in C exit() (uWSGI's master does), os._exit() or SIGKILL: no
    Python code of its runs, and the report is still written, from its journal."""
    echo = peer("echo")
    write_program(
        tmp_path,
        """
        port = int(sys.argv[1])
        talk(port, 4000)
        print("ready", flush=True)
        if sys.argv[2] == "os._exit":
            time.sleep(0.2)
            os._exit(3)
        time.sleep(60)
        """,
    )
    out = tmp_path / "r.json"
    proc = start(tmp_path, mode, "--format", "json", "-o", str(out), "prog.py", str(echo.port), ending)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    if ending == "SIGKILL":
        time.sleep(0.2)
        proc.kill()
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == (3 if ending == "os._exit" else -signal.SIGKILL)
    run = report_of(out)
    assert [p["ended"] for p in run["processes"]] == ["lost"]
    assert (
        [(c["tx"], c["rx"]) for c in to_port(run, echo.port)]
        == [(4000, 4000)]
        == [(r["rx"], r["tx"]) for r in echo.counts()]
    )
    wait_for(lambda: run_folder_gone(tmp_path), 10, "the run's folder removed")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_to_the_run_reports_children_done_and_still_running(tmp_path, peer, signum):
    """SIGTERM or SIGHUP to `netstats run` while its children still run: the report has what
    every child did so far, says which children were still running, the run's folder goes,
    and the run ends by that signal."""
    echo = peer("echo")
    child = TALK + "\ntalk(int(sys.argv[1]), int(sys.argv[2]))\nprint('done', flush=True)\ntime.sleep(60)\n"
    write_program(
        tmp_path,
        """
        import subprocess
        port = int(sys.argv[1])
        kids = [
            subprocess.Popen(  # (stderr not the run's: the test reads that to its end)
                [sys.executable, "-c", CHILD, str(port), str(n)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            for n in (1500, 2500)
        ]
        for kid in kids:
            assert kid.stdout.readline().strip() == b"done"
        print(" ".join(str(k.pid) for k in kids), flush=True)
        time.sleep(60)
        """.replace("CHILD", repr(child)),
    )
    out = tmp_path / "r.json"
    proc = start(tmp_path, "kernel", "--format", "json", "-o", str(out), "prog.py", str(echo.port))
    assert proc.stdout is not None
    kids = [int(pid) for pid in proc.stdout.readline().split()]
    time.sleep(0.3)
    proc.send_signal(signum)
    try:
        proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == -signum
        run = report_of(out, timeout=1)
        assert sorted((c["tx"], c["rx"]) for c in to_port(run, echo.port)) == [(1500, 1500), (2500, 2500)]
        ended = {p["pid"]: p["ended"] for p in run["processes"]}
        assert [ended[k] for k in kids] == ["running", "running"]
        assert run_folder_gone(tmp_path)
    finally:
        for kid in kids:
            os.kill(kid, signal.SIGKILL)


def test_ctrl_c_reports_then_ends_the_run_by_sigint(tmp_path, peer):
    """Ctrl-C (SIGINT to the process group): the traceback is the program's, as python prints it
    (no frame of netstats), the report is written, then `netstats run` dies by SIGINT as python
    does after an uncaught KeyboardInterrupt (a calling shell loop stops)."""
    echo = peer("echo")
    write_program(tmp_path, "talk(int(sys.argv[1]), 700)\nprint('ready', flush=True)\ntime.sleep(60)\n")
    out = tmp_path / "r.json"
    proc = start(tmp_path, "kernel", "--format", "json", "-o", str(out), "prog.py", str(echo.port),
                 start_new_session=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGINT
    traceback = stderr[stderr.index("Traceback") : stderr.index("KeyboardInterrupt")]
    assert 'prog.py", line' in traceback and "netstats" not in traceback
    run = report_of(out, timeout=1)
    assert [(c["tx"], c["rx"]) for c in to_port(run, echo.port)] == [(700, 700)]
    assert run_folder_gone(tmp_path)


@pytest.mark.parametrize("where", ["/dev/full", "a folder the program deleted"])
def test_a_report_that_cannot_be_written_keeps_the_programs_exit_code(tmp_path, peer, where):
    """The report's file cannot be written (disk full; its folder gone): one line names the path
    and the reason, the report goes to stderr instead, the exit code is the program's."""
    echo = peer("echo")
    folder = tmp_path / "out"
    folder.mkdir()
    target = "/dev/full" if where == "/dev/full" else str(folder / "r.txt")
    write_program(
        tmp_path,
        """
        import shutil
        talk(int(sys.argv[1]), 900)
        shutil.rmtree(sys.argv[2], ignore_errors=True)
        sys.exit(5)
        """,
    )
    proc = start(tmp_path, "kernel", "-o", target, "prog.py", str(echo.port), str(folder))
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 5
    (said,) = [line for line in stderr.splitlines() if line.startswith("netstats run: cannot write")]
    reason = "No space left on device" if where == "/dev/full" else "No such file or directory"
    assert target in said and reason in said
    assert "netstats: 1 connection, tx 900 B, rx 900 B" in stderr
    assert not list(tmp_path.glob("**/.r.txt.*.tmp"))


def test_a_symlink_planted_in_a_recreated_run_folder_is_refused(tmp_path, peer):
    """A child that outlives the run: once the run removed its folder, another user may make a
    folder of the same name and plant symlinks in it. The child never writes through them: its
    journal is reached through the folder it joined, never by name."""
    echo = peer("echo")
    go = tmp_path / "go"
    child = TALK + (
        "\nimport pathlib\nprint(os.environ['NETSTATS_RUN_DIR'], flush=True)\n"
        "while not pathlib.Path(sys.argv[2]).exists():\n    time.sleep(0.02)\n"
        "talk(int(sys.argv[1]), 1234)\n"
    )
    write_program(
        tmp_path,
        """
        import subprocess
        kid = subprocess.Popen(
            [sys.executable, "-c", CHILD, sys.argv[1], sys.argv[2]],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        print(kid.pid, kid.stdout.readline().strip(), flush=True)
        """.replace("CHILD", repr(child)),
    )
    out = tmp_path / "r.json"
    proc = start(tmp_path, "kernel", "--format", "json", "-o", str(out), "prog.py", str(echo.port), str(go))
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    kid, folder = stdout.split()
    assert not os.path.exists(folder)  # the run removed it; now someone makes it again
    os.mkdir(folder, 0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in (f"{kid}.journal", f"{kid}-1.journal", f"{kid}.live", f".{kid}.live.{kid}.tmp", "reported"):
        os.symlink(victim, os.path.join(folder, name))
    go.touch()
    wait_for(lambda: not os.path.exists(f"/proc/{kid}"), 20, "the child ended")
    assert victim.read_text() == "precious"
    assert sorted(os.listdir(folder)) == sorted(
        [f"{kid}.journal", f"{kid}-1.journal", f"{kid}.live", f".{kid}.live.{kid}.tmp", "reported"]
    )
    assert len(echoed(echo, 1234)) == 1  # the child did its work all the same


def test_a_child_refuses_a_run_folder_that_is_not_the_runs(tmp_path):
    """Joining a run's folder checks it is the very folder the run made, private to the user."""
    from netstats._journal import Folder, UnsafeFolder

    made = Folder.make()
    try:
        assert Folder.join(made.path, made.token).identity == made.identity
        link = tmp_path / "link"
        link.symlink_to(made.path)
        with pytest.raises(OSError):
            Folder.join(str(link), made.token)
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        with pytest.raises(UnsafeFolder, match="not the folder this run made"):
            Folder.join(str(other), made.token)
        os.chmod(made.path, 0o777)
        with pytest.raises(UnsafeFolder, match="can be written by others"):
            Folder.join(made.path, made.token)
    finally:
        os.chmod(made.path, 0o700)
        made.delete()
