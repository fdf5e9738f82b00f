"""Shared fixtures: independent peers (see peers.py), trustme certificates, a PostgreSQL server;
and how the suite is shared out when it runs in parallel (pytest-xdist, `make test`)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from peers import Peer

import netstats
from netstats import _tags


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def cert_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Server certificate chain and key for 'localhost' and 127.0.0.1, in one PEM file."""
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    path = tmp_path_factory.mktemp("tls") / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def peer(cert_file: str) -> Iterator[Callable[..., Peer]]:
    """Start peers by kind: peer("http"), peer("echo", tls=True) ... stopped after the test."""
    started: list[Peer] = []

    def start(kind: str, *, tls: bool = False, **kwargs: Any) -> Peer:
        p = Peer(kind, cert=cert_file if tls else None, **kwargs)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


@pytest.fixture(autouse=True)
def no_capture_left_behind() -> Iterator[None]:
    """Every test starts and ends with no capture active and socket.socket the stock class."""
    import socket

    stock = socket.socket
    yield
    leaked = 0
    while True:
        try:
            netstats.release()
            leaked += 1
        except netstats.NetstatsError:
            break
    assert leaked == 0, f"the test left {leaked} capture(s) active"
    assert socket.socket is stock


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: long reliability runs (tests/test_soak.py); run with -m soak or NETSTATS_SOAK=1"
    )
    config.addinivalue_line(
        "markers",
        "alone: tests of whole servers and of the census's timing, run after the parallel suite with "
        "nothing beside them (make test: -m 'not alone' on workers, then -m alone in one process)",
    )
    # Started in the background of a shell without job control (`make test &`) or by nohup, the
    # suite inherits SIGINT or SIGHUP ignored, and every program a test starts would too: the tests
    # of Ctrl-C and of hang-ups would wait in vain. A handler of ours is not inherited across exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda signum, frame: None)  # (still deaf to hang-ups itself)


# Run in parallel (`make test`: pytest-xdist with --dist loadgroup), the tests of one group run
# on one worker, one after the other, while the other workers share out the rest. A group each:
# - the modules that start a server of their own for the whole module or session (PostgreSQL and
#   MariaDB, Chromium), so that it starts once;
# - "machine": the tests that load the whole machine or hold a figure to the clock: real servers
#   and their workers (stopped within a bound), the census that must sweep while a connection is
#   open, time-to-first-byte against a server's wait, live views redrawn each second, churns of
#   20,000 connections. Never two of them at once; loadgroup starts the largest group first.
# Some need the machine to themselves, not only no other test of theirs beside them: servers
# whose workers must all boot, serve and stop within bounds, and connections only the census sees
# (a C driver's, a server's C accepts), whose final figures come from the kernel's notifications
# in time. Under the parallel suite's load they lose a race now and then; so they run after it.
ALONE = frozenset({"test_servers", "test_export_prefork", "test_drivers", "test_census"})

GROUPS = {
    "test_census": "databases",
    "test_drivers": "databases",
    "test_timeline": "browser",
    "test_servers": "machine",
    "test_export_prefork": "machine",
    "test_phases": "machine",
    "test_lifecycle": "machine",
    "test_live": "machine",
    "test_own_descriptors": "machine",
    "test_gevent": "machine",
    "test_reliability": "machine",
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests are deselected unless asked for: `-m soak` (as .ci/run does) or NETSTATS_SOAK=1.
    Each test of a module in GROUPS gets its group's xdist_group marker, of one in ALONE the
    alone marker."""
    for item in items:
        group = GROUPS.get(item.path.stem)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        if item.path.stem in ALONE:
            item.add_marker(pytest.mark.alone)
    if "soak" in (config.getoption("markexpr", "") or "") or os.environ.get("NETSTATS_SOAK") == "1":
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


@pytest.fixture(autouse=True)
def tags_off_after() -> Iterator[None]:
    """Tags switch on for good in a process at the first one; the next test starts without. For
    every test: one that tags (test_docs.py's examples do) would leave every later connection of
    its process listening for tags, wrapped, and which tests come later depends on the worker."""
    yield
    _tags.end()


# ---- PostgreSQL, started by the tests themselves (.ci/postgres.sh installs it) ----------------


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="session")
def postgres(ca: trustme.CA) -> Iterator[int]:
    """A PostgreSQL server of the tests' own on 127.0.0.1 (TLS allowed, trust auth); its port.
    Shared by the session (test_census.py, test_drivers.py): starting one takes seconds."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/postgres.sh installs it")
        pytest.skip("PostgreSQL server binaries not installed (Debian 'postgresql'; CI installs it)")
    base = tempfile.mkdtemp(prefix="netstats-pg-")
    data = os.path.join(base, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-U", "netstats", "--auth=trust"], **run)
    cert = ca.issue_cert("localhost", "127.0.0.1")
    for name, blob in (("server.crt", cert.cert_chain_pems[0]), ("server.key", cert.private_key_pem)):
        path = os.path.join(data, name)
        blob.write_to_path(path)
        os.chmod(path, 0o600)
        if as_user:
            os.chown(path, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(os.path.join(data, "postgresql.conf"), "a", encoding="utf-8") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{base}'\n"
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off\n"
        )
    log = os.path.join(base, "log")
    subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start"], **run)
    try:
        yield port
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(base, ignore_errors=True)
