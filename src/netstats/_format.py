"""Figures for people, the same in every report: sizes, durations, addresses, places in the code.

Two marks stand in for a figure, and they mean different things:

- ``?`` (UNKNOWN): there is such a figure, but netstats cannot know it (the kernel did not tell,
  a record lacks it). Never shown as 0. A sum with an unknown part says so: ``12.3 KiB+?``.
- ``-`` (NOT_APPLICABLE): there is no such figure (TLS overhead of a plain connection, the peer
  of an unconnected UDP socket, the caller of a connection no user code opened).

Names (hosts, paths, tag values, argv) come from the program and the network: every report for
people shows them through `visible()`, never as something to interpret.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable
from typing import Any

UNKNOWN = "?"
NOT_APPLICABLE = "-"
LEGEND = "? unknown, - not applicable"


def visible(name: str) -> str:
    """A name as every report for people shows it: as it is, except each character that is not
    printable (str.isprintable: control characters such as ESC, line breaks, bidi overrides, lone
    surrogates) written as its escape, "\\x1b", "\\u202e", and a byte that was not UTF-8 (a
    path's, kept by surrogateescape) as that byte, "\\xff". So no name can move the cursor,
    recolour or hide text, or fail to encode on the way out."""
    if name.isprintable():  # (nearly every name: nothing to do)
        return name
    return "".join(c if c.isprintable() else _escape(c) for c in name)


def _escape(char: str) -> str:
    n = ord(char)
    if 0xDC80 <= n <= 0xDCFF:  # os.fsdecode's stand-in for the undecodable byte n - 0xDC00
        n -= 0xDC00
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def size(n: int | float | None) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 3.2 MiB; None (unknown) is "?"."""
    if n is None:
        return UNKNOWN
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def duration(seconds: float | None) -> str:
    """Seconds for people, always N.NNNs; None (unknown) is "?"."""
    return UNKNOWN if seconds is None else f"{seconds:.3f}s"


def total(values: Iterable[int | float | None]) -> tuple[int | float | None, bool]:
    """(sum of the known values or None if none is known, whether some value was unknown)."""
    known: int | float = 0
    unknown = seen = False
    for v in values:
        if v is None:
            unknown = True
        else:
            known += v
            seen = True
    return (known if seen else None), unknown


def size_total(values: Iterable[int | None], empty: str = NOT_APPLICABLE) -> str:
    """A sum of sizes: "12.3 KiB", "12.3 KiB+?" with an unknown part, "?" if all unknown, or
    `empty` when there is nothing to add up (no such figure)."""
    values = list(values)
    if not values:
        return empty
    known, unknown = total(values)
    if known is None:
        return UNKNOWN
    return size(known) + ("+?" if unknown else "")


_STDLIB = tuple(
    sorted(
        {
            os.path.abspath(p) + os.sep
            for p in (sysconfig.get_paths().get("stdlib"), os.path.dirname(os.__file__))
            if p
        },
        key=len,
        reverse=True,
    )
)


def short_frame(frame: str | None, cwd: str | None = None) -> str:
    """A shorter "path:line in function": relative to cwd, else from the folder on the import
    path it was imported from; "-" for none."""
    if not frame:
        return NOT_APPLICABLE
    cwd = (cwd or os.getcwd()) + os.sep
    if frame.startswith(cwd):
        return frame[len(cwd) :]
    marker = "site-packages" + os.sep
    if marker in frame:
        return frame.split(marker, 1)[1]
    # From the import path on, as the module is named: "netstats/_demo.py", "http/server.py".
    folders = {os.path.abspath(p) + os.sep for p in sys.path if p} | set(_STDLIB)
    for folder in sorted(folders, key=len, reverse=True):
        if frame.startswith(folder):
            return frame[len(folder) :]
    return frame


def address(remote: Any) -> str:
    """An (address, port) pair as people write it: 127.0.0.1:80, [::1]:80; a Unix path as it
    is, an abstract one as @name; "-" for none (no peer)."""
    if isinstance(remote, (list, tuple)) and len(remote) >= 2:
        host, port = remote[0], remote[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(remote, bytes):
        remote = remote.decode("utf-8", "backslashreplace")
    if isinstance(remote, str) and remote.startswith("\0"):
        return "@" + remote[1:]  # a Unix socket's abstract address, as ss(8) writes it
    return str(remote) if remote else NOT_APPLICABLE


def peer(host: str | None, remote: Any) -> str:
    """The peer as host:port, the same way for every connection: the name asked for if any,
    else the address ("localhost:8443", "127.0.0.1:8000", "[::1]:80"); a Unix path as it is."""
    if host and isinstance(remote, (list, tuple)) and len(remote) >= 2:
        return address((host, remote[1]))
    if host and not remote:
        return host
    return address(remote)


def clip(text: str, width: int) -> str:
    """At most `width` characters, keeping the end (a place's file and line): "…/client.py:12"."""
    if len(text) <= width:
        return text
    if width < 2:
        return text[:width]
    parts = text.split(os.sep)
    for i in range(1, len(parts)):  # leading folders first: "…/client.py:12 in fetch"
        shorter = "…" + os.sep + os.sep.join(parts[i:])
        if len(shorter) <= width:
            return shorter
    return "…" + text[len(text) - width + 1 :]
