"""Real servers under `netstats run --servers`, stopped the two ways operators stop them
(issue 23: nothing lost, whatever the process model).

Each case starts one server, as an operator would, in a session of its own:

    this test -> relay peer -> server and its workers -> app -> backend peer (HTTP)

The relay counts every byte of each connection the server accepts, the backend every byte of
each connection the app makes (tests/peers.py: their own counts, in their own processes). The
app (tests/servers/) answers GET /bytes/N with N bytes fetched from the backend on a new
connection, and tells who served: the worker's pid, the client's address as the server saw it,
the outbound connection's local address. Requests go 4 at a time, in rounds, until every
worker has served one; each has a size of its own, so each connection's figures are its own.
Once every connection has ended, the server is stopped, one case each way:

- sigterm: SIGTERM to the `netstats run` process, which is the server's master (`kill`,
  `docker stop`);
- sigint: SIGINT to the whole process group (Ctrl-C).

What each case of test_every_connection_of_every_worker_is_in_the_report proves, for its
server and its stop:
- `netstats run` ends within 30 s, with the exit status the server has without netstats
  (Server.exits, measured; test_without_netstats_* holds the servers themselves to it);
- the report is written, and holds each connection the relay made to the server: accepted by
  the worker that served it (its pid; its remote address too where the server tells the
  client's port), with exactly the relay's rx and tx. Granian accepts in Rust, so only the
  kernel census can find its connections: each is held open 1 s before its request so that it
  can, and the report's wire_rx/wire_tx are held to the relay's counts instead;
- and each connection the backend saw: made by the worker that served the request (its pid,
  found by its local address), with exactly the backend's counts.

The servers, and what each exercises:
- gunicorn sync, -w 2: os.fork() workers, under a Python arbiter that runs in the netstats
  process;
- gunicorn -k uvicorn_worker.UvicornWorker -w 2 (the usual FastAPI deployment): workers that
  reset SIGTERM/SIGINT to their default action and die by them;
- uvicorn --workers 2, hypercorn -w 2: multiprocessing's spawn (fresh interpreters);
- granian --workers 2: forked workers whose connections are accepted in Rust. With
  --workers-kill-timeout 3: on SIGINT to the group a granian worker sometimes hangs (without
  netstats too, about one run in four here), and the master waits for it forever unless told
  to SIGKILL it after a while;
- pyuwsgi --master --processes 2 --die-on-term: uWSGI's C fork and C exit;
- waitress: one process and its threads; SIGTERM kills it by the default action;
- Celery, a prefork worker (-c 2: billiard forks the pool) with a redis broker and result
  backend (Debian's redis-server, started by the test): the tasks' outbound HTTP as above, and
  every connection of every process of the worker to redis (through a relay) with exactly the
  relay's counts (the report's wire_tx/wire_rx: the master closes one with a message unread).
  Tasks are sent and their results read by a Celery client in the test's process, outside
  netstats.

Servers are run by their console scripts (`netstats run .venv/bin/gunicorn -w 2 ...`), as
`netstats run -m gunicorn -w 2 ...` is refused today (`-w` is taken for an option of
`netstats run`). A missing server package or redis-server fails its cases under CI (the CI
variable set) and skips them elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from peers import Peer

APPS = Path(__file__).parent / "servers"
BIN = Path(sys.executable).parent  # the servers' console scripts
STOPS = ("sigterm", "sigint")
EXIT_WAIT = 30.0  # seconds `netstats run` gets to end once stopped
READY_WAIT = 20.0  # seconds a server gets to listen
BATCH = (1000, 20000, 1000, 20000)  # the sizes of a round of requests made together (+ one each)
ROUNDS = 5  # rounds at most, until every worker has served (a worker may start late on a busy machine)
CENSUS_HOLD = 1.0  # seconds each connection to a server that accepts in C or Rust is held mid-request
CENSUS_SETTLE = 0.5  # seconds for the census to see the last of them end
CELERY_SETTLE = 1.5  # seconds idle before a Celery stop: the pool's redis connections stay open

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Server:
    name: str
    program: str  # a console script and its arguments; {port} is the port it listens on
    modules: tuple[str, ...]
    exits: dict[str, int]  # stop -> the server's exit status without netstats (measured)
    workers: int = 2
    census: bool = False  # accepts in Rust: only the kernel census finds them
    tells_port: bool = True  # the app is given the client's port (REMOTE_PORT, scope["client"])
    # As many requests at once as there are workers: a worker that accepts only when free (uWSGI)
    # would take a connection that waited whole at once, too briefly for the census to see.
    one_per_worker: bool = False


SERVERS = [
    Server(
        "gunicorn-sync",
        "gunicorn -w 2 -b 127.0.0.1:{port} wsgi_app:app",
        ("gunicorn",),
        {"sigterm": 0, "sigint": 0},
    ),
    Server(
        "gunicorn-uvicorn-worker",
        "gunicorn -w 2 -b 127.0.0.1:{port} -k uvicorn_worker.UvicornWorker asgi_app:app",
        ("gunicorn", "uvicorn_worker"),
        {"sigterm": 0, "sigint": 0},
    ),
    Server(
        "uvicorn",
        "uvicorn --workers 2 --host 127.0.0.1 --port {port} asgi_app:app",
        ("uvicorn",),
        {"sigterm": 0, "sigint": 0},
    ),
    Server(
        "granian",
        "granian --interface wsgi --workers 2 --workers-kill-timeout 3 --host 127.0.0.1 --port {port}"
        " wsgi_app:app",
        ("granian",),
        {"sigterm": 0, "sigint": 0},
        census=True,
        tells_port=False,
    ),
    Server(
        "pyuwsgi",
        "pyuwsgi --master --processes 2 --die-on-term --http-socket 127.0.0.1:{port} --module wsgi_app:app"
        " --disable-logging",
        ("pyuwsgi",),
        {"sigterm": 0, "sigint": 0},
        census=True,  # uWSGI accepts and speaks HTTP in C
        tells_port=False,
        one_per_worker=True,
    ),
    Server(
        "hypercorn",
        "hypercorn -w 2 -b 127.0.0.1:{port} asgi_app:app",
        ("hypercorn",),
        {"sigterm": 0, "sigint": 0},
    ),
    Server(
        "waitress",
        "waitress-serve --listen=127.0.0.1:{port} wsgi_app:app",
        ("waitress",),
        {"sigterm": -signal.SIGTERM, "sigint": 0},
        workers=1,
    ),
]
CELERY = "celery -A celery_app worker --pool prefork -c 2 --loglevel warning"
CELERY_QUIET = "--without-gossip --without-mingle --without-heartbeat"  # fewer round trips to redis
CELERY_EXITS = {"sigterm": 0, "sigint": 1}  # a warm shutdown either way; SIGINT's handler exits EX_FAILURE


def cases() -> list[Any]:
    return [pytest.param(server, stop, id=f"{server.name}-{stop}") for server in SERVERS for stop in STOPS]


# ---- the harness -----------------------------------------------------------------------------


def need(*modules: str, binary: str | None = None) -> None:
    """Fail under CI, skip elsewhere, when a server's package or program is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if binary is not None and shutil.which(binary) is None:
        missing.append(binary)
    if missing:
        message = f"not installed: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def argv(program: str, port: int = 0) -> list[str]:
    """A server's command line: its console script (from this Python's bin) and arguments."""
    name, *args = program.format(port=port).split()
    if name == "gunicorn" and int(importlib.metadata.version("gunicorn").split(".")[0]) >= 27:
        args.insert(0, "--no-control-socket")  # one path per user ($HOME/.gunicorn): none here
    return [str(BIN / name), *args]


def command(program: list[str], report: Path | None) -> list[str]:
    """The program under `netstats run` when given a report path, else as python runs it."""
    if report is None:
        return [sys.executable, *program]
    return [
        sys.executable,
        "-m",
        "netstats",
        "run",
        "--servers",
        "--format",
        "json",
        "-o",
        str(report),
        *program,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something listens on the port, from the kernel's table (no connection made to ask)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def address(text: str) -> list[Any] | None:
    """ "host:port" as a report writes an address, ["host", port]; None without a port."""
    host, _, port = text.rpartition(":")
    return [host, int(port)] if port else None


@dataclass
class Process:
    """A server started by a test: in a session of its own, its output in a file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + READY_WAIT
        while not listening(port):
            if self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}) before listening:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {port} after {READY_WAIT} s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, how: str) -> int | str:
        """Stopped the operator's way: its exit status (once it has ended, within EXIT_WAIT)."""
        if how == "sigterm":
            os.kill(self.proc.pid, signal.SIGTERM)
        else:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            return f"still running {EXIT_WAIT:.0f} s after the stop"

    def kill_group(self) -> None:
        """SIGKILL to whatever is left of its session (workers that outlived their master)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """start(argv, env, name) -> Process, run in tmp_path; what is left of each is killed after the test."""
    started: list[Process] = []

    def run(argv: list[str], env: dict[str, str], name: str = "server") -> Process:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(APPS), **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(Process(proc, log))
        return started[-1]

    yield run
    for process in started:
        process.kill_group()


@dataclass(frozen=True)
class Served:
    """One request as the client saw it, and who served it as the app said."""

    sent: int
    received: int
    pid: int
    client: list[Any] | None  # the accepted connection's remote address, if the server told its port
    backend: list[Any] | None  # the outbound connection's local address


def get(port: int, n: int, hold: float) -> Served:
    """GET /bytes/n on a new connection (Connection: close), read to its end. `hold`: seconds
    between the request's first line and the rest (a server that accepts only once data came,
    as uWSGI does with TCP_DEFER_ACCEPT, has the connection open meanwhile)."""
    request = f"GET /bytes/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    first = request.index(b"\r\n") + 2
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request[:first])
        time.sleep(hold)
        sock.sendall(request[first:])
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert len(body) == n, (len(body), n)
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(": ")
        fields[name.lower()] = value
    pid, client, backend = int(fields["x-pid"]), address(fields["x-client"]), address(fields["x-backend"])
    return Served(len(request), len(data), pid, client, backend)


def spread(
    call: Callable[[int], Any], workers: int, pid_of: Callable[[Any], int], together: int = len(BATCH)
) -> list[Any]:
    """Rounds of calls made together, each with a size of its own, until `workers` pids served."""
    done: list[Any] = []
    with concurrent.futures.ThreadPoolExecutor(together) as pool:
        for _ in range(ROUNDS):
            sizes = [size + len(done) + i for i, size in enumerate(BATCH)]
            done += pool.map(call, sizes)
            if len({pid_of(result) for result in done}) >= workers:
                break
    return done


def connections(report: Path) -> list[dict[str, Any]] | None:
    """The report's connections; None if there is none."""
    if not report.exists():
        return None
    return json.loads(report.read_text(encoding="utf-8"))["connections"]  # type: ignore[no-any-return]


def outbound(conns: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return [c for c in conns if c["side"] == "client" and c["remote"] == ["127.0.0.1", port]]


def differences(what: str, report: list[Any], peers: list[Any]) -> list[str]:
    """A line per row the peers have and the report lacks, and per row of the report's that
    no peer has (rows compared whole, as many times as they occur)."""
    ours, theirs = Counter(map(repr, report)), Counter(map(repr, peers))
    return [f"{what}: the report lacks {row}" for row in sorted((theirs - ours).elements())] + [
        f"{what}: the report has {row}, which no peer counted" for row in sorted((ours - theirs).elements())
    ]


def exit_status(status: int | str, expected: int) -> list[str]:
    if status == expected:
        return []
    return [f"exit status {status}, where the server's own (its table's) is {expected}"]


def check(problems: list[str], log: str) -> None:
    assert not problems, "\n".join([*problems, "", "the server's output, last lines:", log])


# ---- HTTP servers ------------------------------------------------------------------------------


@dataclass
class Ran:
    """What one case saw: the requests, the peers' own counts, how the server ended."""

    served: list[Served]
    accepted: list[dict[str, Any]]  # the relay's count of each connection to the server
    made: list[dict[str, Any]]  # the backend's count of each connection from the app
    port: int
    backend_port: int
    status: int | str
    log: str


def serve(
    server: Server, stop: str, start: Callable[..., Process], peer: Callable[..., Peer], report: Path | None
) -> Ran:
    """Start the server (under netstats if given a report path), spread requests over its
    workers, wait for every connection to end, stop it."""
    need(*server.modules)
    backend = peer("http")
    port = free_port()
    process = start(command(argv(server.program, port), report), {"BACKEND_PORT": str(backend.port)})
    process.wait_listening(port)
    # (the relay after the server holds its port: made before, it could draw that very number
    # from the kernel, and would then relay to itself, one connection making the next)
    relay = peer("relay", backend=("127.0.0.1", port))
    hold = CENSUS_HOLD if server.census else 0.0
    together = server.workers if server.one_per_worker else len(BATCH)
    served = spread(lambda n: get(relay.port, n, hold), server.workers, lambda s: s.pid, together)
    accepted, made = relay.wait_closed(len(served)), backend.wait_closed(len(served))
    # The harness itself: the relay passed every byte of every request, one connection each.
    assert sorted((r["rx"], r["tx"]) for r in accepted) == sorted((s.sent, s.received) for s in served)
    assert len({s.pid for s in served}) == server.workers, f"not every worker served:\n{process.tail()}"
    if server.census:
        time.sleep(CENSUS_SETTLE)
    status = process.stop(stop)
    log = process.tail()
    process.kill_group()
    return Ran(served, accepted, made, port, backend.port, status, log)


@pytest.mark.parametrize(("server", "stop"), cases())
def test_every_connection_of_every_worker_is_in_the_report(server, stop, start, peer, tmp_path):
    report = tmp_path / "R.json"
    ran = serve(server, stop, start, peer, report)
    problems = exit_status(ran.status, server.exits[stop])
    conns = connections(report)
    if conns is None:
        problems.append("no report")
        conns = []
    request_of = {(s.sent, s.received): s for s in ran.served}  # a relay record's request: the same bytes
    accepted = [c for c in conns if c["side"] == "server" and c["local"] == ["127.0.0.1", ran.port]]
    rx, tx = ("wire_rx", "wire_tx") if server.census else ("rx", "tx")
    problems += differences(
        "accepted (pid, remote, rx, tx)",
        [(c["pid"], c["remote"] if server.tells_port else None, c[rx], c[tx]) for c in accepted],
        [
            (request_of[r["rx"], r["tx"]].pid, request_of[r["rx"], r["tx"]].client, r["rx"], r["tx"])
            for r in ran.accepted
        ],
    )
    made = outbound(conns, ran.backend_port)
    problems += differences(
        "outbound (pid, local)",
        [(c["pid"], c["local"]) for c in made],
        [(s.pid, s.backend) for s in ran.served],
    )
    problems += differences(  # the backend's counts, turned to the app's side
        "outbound (tx, rx)", [(c["tx"], c["rx"]) for c in made], [(r["rx"], r["tx"]) for r in ran.made]
    )
    check(problems, ran.log)


@pytest.mark.parametrize(("server", "stop"), cases())
def test_without_netstats_the_server_ends_with_the_exit_status_of_the_table(server, stop, start, peer):
    """The servers themselves, for Server.exits, which the test above holds netstats to; and
    the harness (peers, workers, stops) shown to work without netstats."""
    ran = serve(server, stop, start, peer, None)
    check(exit_status(ran.status, server.exits[stop]), ran.log)


# ---- a Celery prefork worker -------------------------------------------------------------------


@pytest.fixture
def redis_server(start: Callable[..., Process]) -> int:
    """A redis-server of the test's own (nothing saved), its port."""
    need("celery", "redis", binary="redis-server")
    port = free_port()
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    start(["redis-server", *options], {}, name="redis").wait_listening(port)
    return port


@dataclass
class Worked:
    """What one Celery case saw: the tasks' results, the peers' own counts, how it ended."""

    results: list[dict[str, Any]]  # each task's pid and its backend connection's local address
    made: list[dict[str, Any]]  # the backend's count of each connection from a task
    to_redis: list[dict[str, Any]]  # the relay's count of each connection to redis
    backend_port: int
    broker_port: int
    status: int | str
    log: str


def work(
    stop: str, start: Callable[..., Process], peer: Callable[..., Peer], redis_port: int, report: Path | None
) -> Worked:
    """Start a prefork worker (under netstats if given a report path), send it tasks until both
    pool processes have run one, let it idle, stop it; every process of it ended."""
    from celery import Celery

    backend = peer("http")
    broker = peer("relay", backend=("127.0.0.1", redis_port))  # the worker's way to redis
    env = {"BACKEND_PORT": str(backend.port), "REDIS_URL": f"redis://127.0.0.1:{broker.port}/0"}
    process = start(command(argv(f"{CELERY} {CELERY_QUIET}"), report), env)
    direct = f"redis://127.0.0.1:{redis_port}/0"  # the test's own way to redis, not through the relay
    client = Celery("client", broker=direct, backend=direct)
    try:
        results = spread(
            lambda n: client.send_task("celery_app.fetch_bytes", args=[n]).get(timeout=20),
            2,
            lambda r: r["pid"],
        )
    except Exception as exc:
        raise AssertionError(f"tasks failed: {exc!r}\n{process.tail()}") from exc
    finally:
        client.close()
    made = backend.wait_closed(len(results))
    assert len({r["pid"] for r in results}) == 2, f"not every pool process ran a task:\n{process.tail()}"
    time.sleep(CELERY_SETTLE)
    status = process.stop(stop)
    log = process.tail()
    process.kill_group()
    # Every process of the worker is gone: the relay sees each of their connections to redis end.
    deadline = time.monotonic() + 10
    while not all(r["closed"] for r in broker.counts()) and time.monotonic() < deadline:
        time.sleep(0.05)
    to_redis = broker.counts()
    assert all(r["closed"] for r in to_redis), to_redis
    return Worked(results, made, to_redis, backend.port, broker.port, status, log)


@pytest.mark.parametrize("stop", STOPS)
def test_every_connection_of_every_celery_pool_process_is_in_the_report(
    stop, start, peer, redis_server, tmp_path
):
    report = tmp_path / "R.json"
    worked = work(stop, start, peer, redis_server, report)
    problems = exit_status(worked.status, CELERY_EXITS[stop])
    conns = connections(report)
    if conns is None:
        problems.append("no report")
        conns = []
    made = outbound(conns, worked.backend_port)
    problems += differences(
        "outbound (pid, local)",
        [(c["pid"], c["local"]) for c in made],
        [(r["pid"], address(r["backend"])) for r in worked.results],
    )
    problems += differences(
        "outbound (tx, rx)", [(c["tx"], c["rx"]) for c in made], [(r["rx"], r["tx"]) for r in worked.made]
    )
    # Of any process of the worker. The wire's figures: a connection may be closed with a
    # message from redis unread (the application never read it, the kernel did).
    problems += differences(
        "to redis (wire_tx, wire_rx)",
        [(c["wire_tx"], c["wire_rx"]) for c in outbound(conns, worked.broker_port)],
        [(r["rx"], r["tx"]) for r in worked.to_redis],
    )
    check(problems, worked.log)


@pytest.mark.parametrize("stop", STOPS)
def test_without_netstats_a_celery_worker_ends_with_the_exit_status_of_the_table(
    stop, start, peer, redis_server
):
    worked = work(stop, start, peer, redis_server, None)
    check(exit_status(worked.status, CELERY_EXITS[stop]), worked.log)
