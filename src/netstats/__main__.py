"""Command line: `netstats demo` (more commands come with the CLI issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        from ._demo import run

        return run()
    print("usage: netstats demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
