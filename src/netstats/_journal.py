"""What each process of `netstats run` counted, written as it goes: its journal.

Every process of a run (the program, each child it starts, each process it forks, with or
without fork hooks) appends to a file of its own in the run's folder, so that however it ends
(SIGKILL, a signal's default action, C `exit()`, `os._exit()`) what it counted is there: a
connection's final record the moment it closes, its open connections' figures every INTERVAL
seconds, and a last line when it ends through Python. The run merges the journals (`read_all`).

One JSON object a line (a line cut short by the process's death is skipped):
    {"start": {"pid": 12, "parent": 11, "ticks": 345}}  the process (ticks: its start, /proc)
    {"open": {...a connection's as_dict()...}}          an open connection's figures now
    {"closed": {...}}                                   a connection's final record
    {"accepts": 3}                                      accepted connections left out so far
    {"end": {"time": 1790000000.0}}                     it ended through Python

The run's folder (`Folder`) is made once by the run (mode 0700) and then used only through a
directory descriptor whose identity (device, inode), owner and mode are checked: a child joins
it by name and checks it is that very folder; files are created inside it with O_EXCL and
O_NOFOLLOW. A folder removed and made again by someone else, or a planted symlink, is refused.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _owned
from ._capture import Capture
from ._record import Connection

log = logging.getLogger("netstats")

INTERVAL = 0.5  # seconds between two writes of the open connections' figures
# One line of JSON, ASCII (names that are not are escaped), compact: a closed connection's
# record is written in the thread that closed it, so the fastest form the json module has.
_line = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
SUFFIX = ".journal"
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR = (
    os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


class UnsafeFolder(OSError):
    """The run's folder is not the one the run made (or not private to this user)."""


def _check_private(fd: int, path: str) -> _owned.Identity:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFolder(f"{path} is not a directory")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise UnsafeFolder(f"{path} belongs to another user")
    if st.st_mode & 0o077:
        raise UnsafeFolder(f"{path} can be written by others (mode {st.st_mode & 0o777:o})")
    return st.st_dev, st.st_ino


class Folder:
    """The run's folder, reached through a checked directory descriptor, never again by name."""

    def __init__(self, path: str, fd: int, identity: _owned.Identity) -> None:
        self.path, self._fd, self.identity = path, fd, identity

    @classmethod
    def make(cls) -> Folder:
        """A new private folder for a run (in TMPDIR)."""
        path = tempfile.mkdtemp(prefix="netstats-run-")
        fd = os.open(path, _DIR)
        return cls(path, fd, _check_private(fd, path))

    @classmethod
    def join(cls, path: str, identity: str) -> Folder:
        """The run's folder, in a child: opened by name, and only if it is the one the run made
        (identity "DEV:INO" from the run); else UnsafeFolder."""
        fd = os.open(path, _DIR)
        try:
            found = _check_private(fd, path)
            if f"{found[0]}:{found[1]}" != identity:
                raise UnsafeFolder(f"{path} is not the folder this run made")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, found)

    @property
    def token(self) -> str:
        """What a child needs to join this folder and no other (see join)."""
        return f"{self.identity[0]}:{self.identity[1]}"

    def fd(self) -> int:
        """The folder's descriptor, checked: if the program closed it, the folder is opened again
        by name, and only if it is still the same one (else UnsafeFolder)."""
        if _owned.identity(self._fd) == self.identity:
            return self._fd
        fd = os.open(self.path, _DIR)
        if _owned.identity(fd) != self.identity:
            os.close(fd)
            raise UnsafeFolder(f"{self.path} is not the folder this run made any more")
        self._fd = fd
        return fd

    def create(self, name: str) -> int:
        """A new file in the folder (never an existing one, never through a link), to append to."""
        return os.open(name, _NEW | os.O_APPEND, 0o600, dir_fd=self.fd())

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd()))

    def read(self, name: str) -> bytes:
        fd = os.open(name, _READ, dir_fd=self.fd())
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes) -> None:
        """Replace file `name` in the folder with data, atomically (a new file, then a rename)."""
        folder = self.fd()
        tmp = f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, _NEW, 0o600, dir_fd=folder)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)

    def remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd())
        except OSError:
            pass

    def delete(self) -> None:
        """Remove the folder and what is in it (once the run's report is made)."""
        try:
            for name in self.names():
                self.remove(name)
            os.rmdir(self.path)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if _owned.identity(self._fd) == self.identity:
            os.close(self._fd)
        self._fd = -1


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc): tells it from a later one that
    reuses its pid. None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def running(pid: int, ticks: int | None) -> bool:
    """Whether the process that wrote a journal still runs (not a zombie, not a pid reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return fields[0] != b"Z" and (ticks is None or int(fields[19]) == ticks)
    except (OSError, ValueError, IndexError):
        return True


class Journal:
    """This process's journal of a capture, in the run's folder."""

    def __init__(self, folder: Folder, cap: Capture, accepts: Callable[[], int]) -> None:
        self.folder, self.cap, self.accepts = folder, cap, accepts
        self.name = ""
        self._fd = -1
        self._identity: _owned.Identity | None = None
        self._pid = os.getpid()
        self._written: dict[int, Any] = {}  # open connection id -> its figures last written
        self._accepts = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = False
        self._broken = False

    def start(self) -> Journal:
        pid = self._pid
        for n in range(100):  # a pid the run saw before (reused): the next free name
            name = f"{pid}{SUFFIX}" if n == 0 else f"{pid}-{n}{SUFFIX}"
            try:
                self._fd = self.folder.create(name)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free journal name for pid {pid}")
        self.name = name
        self._identity = _owned.identity(self._fd)
        start = {"pid": pid, "parent": os.getppid(), "ticks": start_ticks(pid)}
        self._write(_line({"start": start}) + "\n")
        self.cap.add_observer(self._closed)
        self._thread = threading.Thread(target=self._run, name="netstats-journal", daemon=True)
        self._thread.start()
        return self

    def _closed(self, conn: Connection) -> None:
        """A connection's final record, written as it closes (its process may die any moment)."""
        self._written.pop(conn.id, None)
        self._write(_line({"closed": conn.as_dict()}) + "\n")

    def _run(self) -> None:
        while not self._stopping.wait(INTERVAL):
            try:
                self.flush()
            except Exception:
                log.exception("netstats: the run's journal could not be written (the program is unaffected)")

    def flush(self) -> None:
        """Write the figures of the open connections that changed since they were last written."""
        lines = []
        for conn in self.cap.open_connections():
            figures: Any = conn.totals()
            if conn.source != "python":
                info = conn.tcp_info()
                figures = (info.wire_rx, info.wire_tx) if info is not None else None
            if self._written.get(conn.id) != figures:
                self._written[conn.id] = figures
                lines.append(_line({"open": conn.as_dict()}))
        accepts = self.accepts()
        if accepts != self._accepts:
            self._accepts = accepts
            lines.append(_line({"accepts": accepts}))
        if lines:
            self._write("\n".join(lines) + "\n")

    def end(self) -> None:
        """The process ends through Python: stop the capture, write what is open, say goodbye."""
        if self._ended or os.getpid() != self._pid:
            return
        self._ended = True
        self._stop_thread()
        self.cap.stop()
        self._written.clear()  # every open connection once more, as it is now
        self.flush()
        self._write(_line({"end": {"time": time.time()}}) + "\n")
        self.close()

    def close(self) -> None:
        """Write no more (the run's own process, whose report is made from its capture)."""
        self._stop_thread()
        self.cap.remove_observer(self._closed)
        if self._fd >= 0 and _owned.identity(self._fd) == self._identity:
            os.close(self._fd)
        self._fd = -1
        self._broken = True

    def _stop_thread(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def _write(self, text: str) -> None:
        """Append, through a descriptor checked to be this journal's (the program may have
        closed it and reused its number: the journal is then opened again in the folder)."""
        if self._broken:
            return
        try:
            if _owned.identity(self._fd) != self._identity:
                fd = os.open(self.name, os.O_WRONLY | os.O_APPEND | _READ, dir_fd=self.folder.fd())
                if _owned.identity(fd) != self._identity:
                    os.close(fd)
                    raise UnsafeFolder(f"{self.name} is not this process's journal any more")
                self._fd = fd
            data = text.encode("ascii")  # (JSON with every other character escaped)
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self._broken = True
            log.warning(
                "netstats: cannot write the run's journal %s (%s); this process's figures stop here",
                self.name,
                exc,
            )


def read_all(folder: Folder, skip: str = "") -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(connections, processes, accepts left out) from every journal in the folder but `skip`.

    A connection appears once: its final record, or else its last figures, marked "unfinished"
    with "process lost" (its process ended without its last line: at most its last INTERVAL
    is missing) or "process running" (still running as the report is made). A process is
    {"pid", "parent", "ended"}: "exit" (through Python), "lost" or "running"."""
    connections: list[dict[str, Any]] = []
    processes: list[dict[str, Any]] = []
    accepts = 0
    for name in folder.names():
        if not name.endswith(SUFFIX) or name == skip:
            continue
        try:
            data = folder.read(name)
        except OSError:
            continue
        start: dict[str, Any] = {}
        records: dict[int, dict[str, Any]] = {}
        final: set[int] = set()
        ended = False
        left_out = 0
        for line in data.split(b"\n"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # cut short, or empty
            if not isinstance(entry, dict) or len(entry) != 1:
                continue
            ((kind, value),) = entry.items()
            if kind == "start" and isinstance(value, dict):
                start = value
            elif kind in ("open", "closed") and isinstance(value, dict) and isinstance(value.get("id"), int):
                if value["id"] not in final:
                    records[value["id"]] = value
                if kind == "closed":
                    final.add(value["id"])
            elif kind == "accepts" and isinstance(value, int):
                left_out = value  # so far: the last line says all
            elif kind == "end":
                ended = True
        pid = start.get("pid")
        if not isinstance(pid, int):
            continue
        accepts += left_out
        how = "exit" if ended else ("running" if running(pid, start.get("ticks")) else "lost")
        processes.append({"pid": pid, "parent": start.get("parent"), "ended": how})
        for conn_id, record in records.items():
            if conn_id not in final and record.get("closed") is None and how != "exit":
                record["unfinished"] = f"process {how}"
            connections.append(record)
    return connections, processes, accepts
