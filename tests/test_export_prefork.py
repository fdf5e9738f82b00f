"""A pre-fork server's whole service in one scrape: a real `gunicorn -w 4` whose workers each
`publish()` to prometheus_client's multiprocess directory, served summed by the master.

The app's requests each make one outbound HTTP call to a peer (tests/peers.py) that counts its
own bytes: every expected figure is the peer's. Below it, what a worker writes (`Increments`),
in this process.
"""

from __future__ import annotations

import _socket
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import roundtrip, wait_for
from prometheus_client.parser import text_string_to_metric_families

import netstats
from netstats.export import prometheus
from netstats.export._increments import Increments

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds workers in /proc")

LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never a proxy

CONFIG = """
import json, os
import netstats
from netstats.export import prometheus
from prometheus_client import multiprocess

bind = "127.0.0.1:0"
workers = 4
worker_class = "sync"
graceful_timeout = 2

def when_ready(server):  # the master: one endpoint for every worker's figures
    endpoint = prometheus.serve_all(0)
    ports = {"app": server.LISTENERS[0].getsockname()[1], "metrics": endpoint.port}
    with open(os.environ["PORTS_FILE"] + ".tmp", "w") as f:
        json.dump(ports, f)
    os.replace(os.environ["PORTS_FILE"] + ".tmp", os.environ["PORTS_FILE"])

def post_fork(server, worker):  # each worker: its own capture, written as it changes
    prometheus.publish(netstats.capture(keep=False))

def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""

# GET /N: fetch N bytes from the peer on a connection of its own (closed before answering), then
# answer "pid". The short sleep keeps a worker busy so that concurrent requests spread.
APP = """
import http.client, os, time

def application(environ, start_response):
    size = int(environ["PATH_INFO"].strip("/"))
    peer = http.client.HTTPConnection("127.0.0.1", int(os.environ["PEER_PORT"]), timeout=10)
    peer.request("GET", f"/bytes/{size}", headers={"Connection": "close"})
    assert len(peer.getresponse().read()) == size
    peer.close()
    time.sleep(0.05)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""

Series = tuple[str, frozenset[tuple[str, str]]]


def scrape(port: int) -> dict[Series, float]:
    """Every sample of the endpoint, by (name, labels)."""
    with LOCAL.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


FIGURES = {  # metric -> the figure it adds to (bytes ones: followed by the direction)
    "netstats_bytes_total": "",
    "netstats_wire_bytes_total": "wire_",
    "netstats_connections_total": "connections",
    "netstats_connection_duration_seconds_count": "closed",
}


def peer_figures(samples: dict[Series, float], peer_port: int) -> dict[str, float]:
    """The sums over the peer's series: bytes each way, wire bytes, connections, closed ones."""
    out = {"tx": 0.0, "rx": 0.0, "wire_tx": 0.0, "wire_rx": 0.0, "connections": 0.0, "closed": 0.0}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name in FIGURES and label.get("port") == str(peer_port):
            out[FIGURES[name] + label.get("direction", "")] += value
    return out


def scrape_when(port: int, peer_port: int, want: dict[str, float]) -> dict[Series, float]:
    """The first scrape whose peer figures are `want` (a close is written a moment after it),
    or the last one after 5 seconds."""
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(port)
        if peer_figures(samples, peer_port) == want or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def expected(peer: Any, n: int) -> dict[str, float]:
    """The client side of the peer's own counts of its first n connections (all closed)."""
    rx, tx = peer.totals(n)  # what the peer read is what the workers wrote
    return {"tx": rx, "rx": tx, "wire_tx": rx, "wire_rx": tx, "connections": n, "closed": n}


def workers(master: int) -> set[int]:
    """The master's child processes, from /proc."""
    children: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        try:
            children.update(int(pid) for pid in (task / "children").read_text().split())
        except FileNotFoundError:  # a thread that ended meanwhile (the endpoint's, per scrape)
            pass
    return children


def drive(port: int, sizes: list[int]) -> list[int]:
    """GET /size for each size, 8 at a time; the pids of the workers that answered."""
    served: list[int] = []
    errors: list[BaseException] = []

    def client(mine: list[int]) -> None:
        try:
            for size in mine:
                with LOCAL.open(f"http://127.0.0.1:{port}/{size}", timeout=10) as response:
                    served.append(int(response.read()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(sizes[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and len(served) == len(sizes), errors
    return served


def test_one_scrape_sums_every_worker_and_a_killed_workers_figures_stay(peer, tmp_path):
    http = peer("http")
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    (tmp_path / "gunicorn.conf.py").write_text(textwrap.dedent(CONFIG))
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    ports_file = tmp_path / "ports.json"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "PEER_PORT": str(http.port),
        "PORTS_FILE": str(ports_file),
    }
    with open(tmp_path / "gunicorn.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:application"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: ports_file.exists() or server.poll() is not None, 15, "gunicorn to start")
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
            ports = json.loads(ports_file.read_text())
            wait_for(lambda: len(workers(server.pid)) == 4, 15, "4 workers")

            first = drive(ports["app"], [1000 + 37 * i for i in range(24)])
            assert len(set(first)) >= 2, f"one worker served every request: {first}"
            want = expected(http, 24)
            before = scrape_when(ports["metrics"], http.port, want)
            assert peer_figures(before, http.port) == want

            # SIGKILL a worker that served some: its published figures stay, gunicorn replaces it.
            killed = first[0]
            os.kill(killed, signal.SIGKILL)
            wait_for(lambda: len(w := workers(server.pid)) == 4 and killed not in w, 15, "a new worker")
            assert (multiproc / f"counter_{killed}.db").exists()

            drive(ports["app"], [5000 + 11 * i for i in range(24)])
            want = expected(http, 48)
            after = scrape_when(ports["metrics"], http.port, want)
            assert peer_figures(after, http.port) == want
            for series, value in before.items():
                assert after.get(series, -1) >= value, f"{series} went from {value} to {after.get(series)}"
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)


# ---- what each worker writes, in this process ------------------------------------------------


class Written:
    """An `add` for Increments that keeps the sum of every figure it was given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sums: dict[tuple[str, tuple[str, ...]], float] = {}
        self.calls: list[tuple[str, tuple[str, ...], float]] = []

    def __call__(self, name: str, key: tuple[str, ...], amount: float) -> None:
        with self.lock:
            self.sums[name, key] = self.sums.get((name, key), 0) + amount
            self.calls.append((name, key, amount))


def port_label(conn: Any) -> tuple[str, ...]:
    return (str(conn.remote[1]) if isinstance(conn.remote, tuple) else "",)


def test_increments_add_each_byte_once_and_nothing_for_bytes_nobody_counted(peer):
    counted, found = peer("echo"), peer("echo")
    written = Written()
    with netstats.capture(keep=False) as cap:
        inc = Increments(cap, port_label, ("other",), written, interval=0.05)
        try:
            with socket.create_connection(counted.address) as s:
                roundtrip(s, 1000)
                wait_for(lambda: written.sums.get(("bytes", ("tx", str(counted.port)))) == 1000, 5)
                roundtrip(s, 500)  # written open, then at its close: the rest, once
            raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)  # C code's: the census finds it
            try:
                raw.connect(found.address)
                raw.sendall(b"x" * 4321)
                wire = ("wire_bytes", ("tx", str(found.port)))
                wait_for(lambda: written.sums.get(wire) == 4321, 5, "the found connection's wire bytes")
            finally:
                raw.close()
        finally:
            inc.close()
    rx, tx = counted.totals(1)
    key = (str(counted.port),)
    assert written.sums[("bytes", ("tx", *key))] == rx == 1500
    assert written.sums[("bytes", ("rx", *key))] == tx
    assert written.sums[("connections", key)] == 1
    assert written.sums[("connections", (str(found.port),))] == 1
    assert not [c for c in written.calls if c[0] == "bytes" and c[1][1] == str(found.port)]  # never a 0
    assert all(amount >= 0 for _, _, amount in written.calls)  # counters: only ever added to


def test_increments_fold_label_sets_beyond_max_series_into_other(peer):
    peers = [peer("echo") for _ in range(3)]
    written = Written()
    with netstats.capture(keep=False) as cap:
        inc = Increments(cap, port_label, ("other",), written, max_series=2)
        for p, size in zip(peers, (100, 200, 300), strict=True):
            with socket.create_connection(p.address) as s:
                roundtrip(s, size)
        inc.close()
    for p in peers:
        p.totals(1)
    assert {key for name, key in written.sums if name == "connections"} == {
        (str(peers[0].port),),
        (str(peers[1].port),),
        ("other",),
    }
    assert written.sums[("bytes", ("tx", "other"))] == 300


def test_publish_refuses_without_prometheus_clients_multiprocess_mode():
    # This process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: its figures would
    # never reach a file.
    with (
        netstats.capture(keep=False) as cap,
        pytest.raises(netstats.NetstatsError, match="PROMETHEUS_MULTIPROC_DIR"),
    ):
        prometheus.publish(cap)
