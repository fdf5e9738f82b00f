"""Soak: the reliability suite's promises at full size, too long for the main run.

Deselected by default (see conftest.py); run with `pytest -m soak` or NETSTATS_SOAK=1.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability import OPERATIONS, churn, exchange, join_all, payload, run_everywhere

import netstats

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


@linux_only
def test_200000_unix_connections_under_keep_false_leave_no_memory_and_no_descriptor():
    figures = churn("unix", 200_000, seconds=300)
    assert figures["rss_growth"] < 5 * 2**20
    assert figures["fd_change"] == 0


@linux_only
def test_200000_tcp_connections_under_keep_false_leave_no_memory_and_no_descriptor():
    figures = churn("tcp", 200_000, seconds=600)
    assert figures["rss_growth"] < 5 * 2**20
    assert figures["fd_change"] == 0


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPERATIONS, seed=st.integers(0, 2**32 - 1))
def test_400_sequences_of_socket_operations_behave_exactly_as_on_a_stock_socket(ops, seed, tmp_path_factory):
    run_everywhere(ops, seed, str(tmp_path_factory.getbasetemp()))


def test_32_threads_of_1000_unix_connections_count_exactly(peer):
    """Unix sockets (TCP would leave 32,000 client ports in TIME_WAIT)."""
    with tempfile.TemporaryDirectory(prefix="ns") as tmp:
        echo = peer("echo", unix=os.path.join(tmp, "echo"))
        rng = random.Random(32_000)
        plan = [[rng.randrange(0, 20_000) for _ in range(1000)] for _ in range(32)]
        done: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def client(sizes: list[int]) -> None:
            try:
                for size in sizes:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(30)
                        s.connect(echo.address)
                        exchange(s, payload(size))
                        done.append((netstats.stats(s, "id"), size))
            except BaseException as exc:
                errors.append(exc)

        with netstats.capture(lambda e, c, n: None) as cap:
            threads = [threading.Thread(target=client, args=(sizes,)) for sizes in plan]
            for t in threads:
                t.start()
            join_all(threads, 900)
        assert not errors, errors[:3]
        sizes = [size for sizes in plan for size in sizes]
        records = echo.wait_closed(len(sizes), timeout=120)
        assert sorted(r["rx"] for r in records) == sorted(r["tx"] for r in records) == sorted(sizes)
        by_id = {conn.id: conn for conn in cap.connections}
        assert len(done) == len(by_id) == 32_000
        for conn_id, size in done:
            assert (by_id[conn_id].tx, by_id[conn_id].rx) == (size, size)
        assert (cap.tx, cap.rx) == (sum(sizes), sum(sizes))
