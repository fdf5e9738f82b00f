"""Helpers shared by the test files: reading exactly, round trips, the two counting modes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import netstats

# The two ways netstats counts a connection (ARCHITECTURE.md): the kernel's counters when
# nobody listens for read/write events, the per-call wrappers when a callback does. A test of
# counting runs in both: `@pytest.mark.parametrize("mode", MODES)` and `capture_in(mode)`.
MODES = ("kernel-counted", "wrapped")


def capture_in(
    mode: str, events: list[tuple[str, int | None]] | None = None, **kwargs: Any
) -> netstats.Capture:
    """A capture that counts in `mode`; `events`, if given, collects (event, nbytes) in order."""

    def callback(event: str, conn: netstats.Connection, nbytes: int | None) -> None:
        if events is not None:
            events.append((event, nbytes))

    if mode == "kernel-counted":
        wanted = {"open", "connect", "close"}
        return netstats.capture(callback if events is not None else None, events=wanted, **kwargs)
    assert mode == "wrapped", mode
    return netstats.capture(callback, **kwargs)


def drain(sock: Any, size: int) -> bytes:
    """Read exactly size bytes (size > 0: reading nothing is never what a test means)."""
    assert size > 0, "drain() of nothing"
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(min(65536, size - len(out)))
        assert chunk, "peer closed early"
        out += chunk
    return bytes(out)


def roundtrip(sock: Any, size: int) -> None:
    """Send size bytes to an echo peer and read them back."""
    sock.sendall(b"x" * size)
    drain(sock, size)


def established(cap: netstats.Capture) -> list[netstats.Connection]:
    """The connections that connected; a name may first be tried on an address that refuses,
    and such an attempt has an error and no bytes."""
    failed = [c for c in cap.connections if c.error is not None]
    assert all((c.rx, c.tx) == (0, 0) for c in failed), failed
    return [c for c in cap.connections if c.error is None]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str = "", every: float = 0.02) -> Any:
    """predicate()'s first true value, asked every `every` seconds for at most `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(every)


def tag_counts_of(http: Any) -> dict[str, dict[str, int]]:
    """An HTTP peer's own per-tag counts (tests/peers.py), turned to the client's side: the
    client read what the peer wrote."""
    return {tag: {"rx": tx, "tx": rx} for tag, (rx, tx) in http.tags().items()}
