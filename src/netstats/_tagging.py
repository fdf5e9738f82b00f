"""`netstats.tag()`: bytes per request, task or tenant, and the tallies by one label.

Tags are contextvars: a tag set in a thread or task covers what it runs, asyncio tasks it
creates, and threads started through `contextvars.copy_context().run` (and executors that copy
the context). Which byte goes to which labels is decided in _tags.py.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from . import _engine, _state, _tags
from ._record import Connection

F = TypeVar("F", bound=Callable[..., Any])


def _start() -> None:
    if not _tags.in_use:
        with _state.lock:
            if _tags.begin():
                _engine.start_tagging()


class tag:  # noqa: N801 (used like a function: `with netstats.tag(route="/users"):`)
    """Attribute the bytes moved under it to these labels; a context manager or a decorator
    (of a function or a coroutine function). Nested tags merge, the inner one winning per key.

    >>> with netstats.tag(route="/users", tenant="acme") as t:
    ...     session.get("http://127.0.0.1:8000/users")
    >>> t.rx, t.tx                  # the bytes moved under this tag (every time it was entered)
    >>> cap.by_tag("route")         # {"/users": {"rx": 5123, "tx": 312}, None: {...untagged...}}
    """

    __slots__ = ("labels", "_totals", "_tokens")

    def __init__(self, **labels: str) -> None:
        if not labels:
            raise TypeError("tag() needs at least one label, e.g. tag(route='/users')")
        for key, value in labels.items():
            if not isinstance(value, str):
                raise TypeError(f"tag label {key!r} must be a str, not {type(value).__name__}")
        self.labels = labels
        self._totals = [0, 0]  # rx, tx moved under this tag (its sink, see _tags.Scope)
        self._tokens: list[Any] = []

    @property
    def rx(self) -> int:
        """Application bytes read under this tag (turn ownership included, see the README)."""
        _tags.settle_all()
        return self._totals[0]

    @property
    def tx(self) -> int:
        """Application bytes written under this tag."""
        _tags.settle_all()
        return self._totals[1]

    def _enter(self) -> Any:
        _start()
        outer = _tags.current.get()
        merged = dict(outer.key.labels) if outer is not None else {}
        merged.update(self.labels)
        around = (*outer.outer, outer.sink) if outer is not None else ()
        return _tags.current.set(_tags.Scope(tuple(sorted(merged.items())), self._totals, around))

    def __enter__(self) -> tag:
        self._tokens.append(self._enter())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The same tag object may be entered in several threads or tasks at once: take back the
        # latest entry made in this context (a token of another context cannot be reset here).
        tokens = self._tokens
        for i in range(len(tokens) - 1, -1, -1):
            try:
                _tags.current.reset(tokens[i])
            except (ValueError, RuntimeError):
                continue
            del tokens[i]
            return

    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"tag() decorates a function, not {type(fn).__name__}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            # its body runs at each next(), long after the call returned: the tag would not cover it
            raise TypeError(
                f"tag() cannot decorate the generator function {fn.__qualname__}(); "
                "use `with netstats.tag(...):` inside it"
            )
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                token = self._enter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _tags.current.reset(token)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = self._enter()
            try:
                return fn(*args, **kwargs)
            finally:
                _tags.current.reset(token)

        return run  # type: ignore[return-value]

    def __repr__(self) -> str:
        labels = ", ".join(f"{k}={v!r}" for k, v in self.labels.items())
        return f"netstats.tag({labels})"


def by_tag(connections: Iterable[Connection], key: str) -> dict[str | None, dict[str, int | None]]:
    """Application bytes per value of the label `key` over these connections, and under None
    the bytes moved without that label (untagged, or tagged with other keys only). The None
    row's figures are None when a connection's application bytes cannot be known (source
    "kernel"); every row's are None when a connection's bytes cannot be split by tag (see
    Connection.tags)."""
    if not isinstance(key, str):
        raise TypeError(f"by_tag() takes a label name (a str), not {type(key).__name__}")
    rows: dict[str | None, dict[str, int | None]] = {}
    rest: list[int] | None = [0, 0]
    unsplit = False  # a connection whose bytes cannot be split by tag: no row is known
    for conn in connections:
        if not _tags.splittable(conn):
            unsplit = True
        rx, tx = conn.totals()
        if rx is None or tx is None:
            rest = None
        elif rest is not None:
            rest[0] += rx
            rest[1] += tx
        for labels, tag_rx, tag_tx in _tags.tallies(conn):
            value = dict(labels).get(key)
            if value is None:
                continue
            row = rows.setdefault(value, {"rx": 0, "tx": 0})
            row["rx"] = (row["rx"] or 0) + tag_rx
            row["tx"] = (row["tx"] or 0) + tag_tx
            if rest is not None:
                rest[0] -= tag_rx
                rest[1] -= tag_tx
    rows[None] = {"rx": rest[0], "tx": rest[1]} if rest is not None else {"rx": None, "tx": None}
    if unsplit:
        return {value: {"rx": None, "tx": None} for value in rows}
    return rows
