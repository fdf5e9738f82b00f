"""Figures for people, the same in every report: sizes, addresses, places in the code."""

from __future__ import annotations

import os
from typing import Any


def size(n: int | None) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 3.2 MiB; "?" for a figure netstats cannot know."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_frame(frame: str | None, cwd: str | None = None) -> str:
    """A shorter "path:line in function": relative to cwd, or from the package on."""
    if not frame:
        return "-"
    cwd = (cwd or os.getcwd()) + os.sep
    if frame.startswith(cwd):
        return frame[len(cwd) :]
    marker = "site-packages" + os.sep
    if marker in frame:
        return frame.split(marker, 1)[1]
    return frame


def address(remote: Any) -> str:
    """An (address, port) pair as people write it: 127.0.0.1:80, [::1]:80; a Unix path as it is."""
    if isinstance(remote, (list, tuple)) and len(remote) >= 2:
        host, port = remote[0], remote[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(remote) if remote else "-"
