"""The command line: a thin layer over the API (run, report, demo)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

from ._report import FORMATS, GROUPS, SORTS, TAG, TOP, BadRun, Run, deliver, unwritable
from ._version import __version__

EXAMPLES = """\
examples:
  netstats run script.py --its-own-flag     run a script, report on stderr
  netstats run -m http.server 8000          run a module
  netstats run --servers -m http.server     ... with the connections it accepts
  netstats run -o run.json --format json app.py
  netstats report run.json --by host        re-render a saved run
  netstats run --live app.py                a table redrawn every second while it runs
  netstats top 1234                         any process's TCP connections, live
  netstats demo                             see it all offline, in seconds
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _rows(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"needs a number of rows (0: all), not {text!r}")
    return int(text)


def _pid(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 0 < n < 2**31:  # a pid_t (os.kill overflows beyond; 0 and -1 would mean groups)
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return n


def _grouping(text: str) -> str:
    if text in GROUPS or (text.startswith(TAG) and len(text) > len(TAG)):
        return text
    raise argparse.ArgumentTypeError(
        f"cannot group by {text!r}; choose one of {', '.join(GROUPS)} or tag:KEY"
    )


# Where `netstats run` writes a machine format without -o (the program owns stdout and stderr).
MACHINE_FILES = {"json": "netstats.json", "csv": "netstats.csv", "trace": "netstats-trace.json"}


def _output_options(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument("--format", choices=FORMATS, default="text", help="report format (default text)")
    parser.add_argument(
        "--by",
        type=_grouping,
        metavar="{host,origin,caller,pid,tag:KEY}",
        help="group connections by host, origin, caller or pid, or bytes by the netstats.tag() label KEY",
    )
    parser.add_argument(
        "--sort", choices=SORTS, default="bytes", help="largest first by (default bytes: tx+rx)"
    )
    parser.add_argument(
        "--top",
        type=_rows,
        metavar="N",
        help=f"text: the first N rows (default {TOP}, 0: all)",
    )
    parser.add_argument("--wide", action="store_true", help="text: every column, nothing shortened")
    parser.add_argument(
        "-o", "--output", metavar="FILE", help=f"write the report to FILE, - for stdout (default: {where})"
    )
    parser.add_argument(
        "--html", metavar="FILE", help="also write the timeline to FILE: one HTML page, offline"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="netstats",
        description="What a Python program does on the network, per connection.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"netstats {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{run,report,top,demo}", parser_class=_Parser)
    run = commands.add_parser(
        "run",
        help="run a Python program and report its connections",
        description="Run a program as python would (same argv, __main__, exit code), report its connections.",
        epilog="examples:\n  netstats run script.py arg1\n  netstats run -m module arg1\n"
        "  netstats run --by host -o report.txt script.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    run.add_argument("--servers", action="store_true", help="also report connections the program accepts")
    run.add_argument(
        "--live",
        action="store_true",
        help="a table of each connection's last second, closed ones too, while it runs (rich)",
    )
    _output_options(run, "text: stderr; others: netstats.json, .csv, -trace.json")
    run.add_argument("program", nargs=argparse.REMAINDER, help="script.py and its arguments")
    report = commands.add_parser(
        "report",
        help="re-render a run saved with --format json",
        description="Re-render a run saved by `netstats run --format json -o FILE`, in any format, "
        "grouping or order.",
        epilog="examples:\n"
        "  netstats run --format json -o run.json app.py\n"
        "  netstats report run.json --by host\n"
        "  netstats report run.json --format csv -o run.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("file", help="a JSON file written by netstats run --format json")
    _output_options(report, "stdout")
    top = commands.add_parser(
        "top",
        help="any process's TCP connections, live, from the kernel",
        description="The TCP connections of a process you own, in any language, from the kernel alone "
        "(Linux): remote, wire bytes, rx and tx rates over the last second, rtt, retransmissions, "
        "redrawn every second; a connection closed since the last refresh is listed a few seconds.",
        epilog="examples:\n  netstats top 1234\n  netstats top 1234 --once --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("pid", type=_pid, help="the process to watch")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument("--format", choices=("text", "json"), default="text", help="with --once (default text)")
    commands.add_parser(
        "demo",
        help="a loopback HTTP and HTTPS server, fetched and reported",
        description="Start a loopback HTTP and an HTTPS server in this process, fetch from both with urllib "
        "and asyncio, print each connection's events and marks as they happen, then the report. "
        "Offline, a few seconds.",
    )
    return parser


_TAKES_VALUE = frozenset({"--format", "--by", "--sort", "--top", "-o", "--output", "--html"})


def _program_after_module(argv: list[str]) -> list[str]:
    """`run ... -m MODULE ARGS`: as with python -m, everything after MODULE is the program's,
    dashes included (argparse would read `-w 2` as options of its own): put a `--` there."""
    if not argv or argv[0] != "run":
        return argv
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-"):
            return argv  # the script comes first: the rest is already the program's
        if arg == "-m" and i + 1 < len(argv):
            rest = argv[i + 2 :]
            return [*argv[: i + 2], *([] if rest[:1] == ["--"] else ["--"]), *rest]
        i += 2 if arg in _TAKES_VALUE else 1
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(_program_after_module(sys.argv[1:] if argv is None else argv))
    if args.command == "run":
        return _run(parser, args)
    if args.command == "report":
        return _report(args)
    if args.command == "top":
        return _top(args)
    if args.command == "demo":
        from ._demo import run as demo

        return demo()
    parser.print_help(sys.stderr)
    return 2


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """What _report.deliver needs to render and write a run as the command line asked."""
    return {
        "format": args.format, "by": args.by, "top": args.top, "sort": args.sort, "wide": args.wide,
        "output": args.output, "html": args.html,
    }  # fmt: skip


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ._errors import NoSuchProgram
    from ._run import run_program

    if args.module:
        target, rest = args.module, args.program[1:] if args.program[:1] == ["--"] else args.program
    elif args.program:
        target, rest = args.program[0], args.program[1:]
    else:
        parser.exit(2, "netstats run: error: give a script or -m module (see netstats run --help)\n")

    if args.output is None and args.format != "text":
        # A machine format never goes into the program's own stderr: to a file, said in one line
        # at the end ("-o -" for stdout).
        args.output = MACHINE_FILES[args.format]
    for option in ("output", "html"):  # checked before the program runs (no run lost to a typo),
        path = getattr(args, option)  # and kept absolute for a program that changes directory
        if path and path != "-":
            if unwritable(path):
                parser.exit(2, f"netstats run: error: cannot write {path}: {unwritable(path)}\n")
            setattr(args, option, os.path.abspath(path))

    watch = None
    if args.live:
        from . import _live

        if not _live.available():
            parser.exit(2, f"netstats run: --live {_live.MISSING}\n")
        watch = _live.watch
    try:
        result = run_program(
            target, rest, module=bool(args.module), servers=args.servers, report=_options(args), watch=watch
        )
    except NoSuchProgram as exc:
        print(f"netstats run: {exc}", file=sys.stderr)
        return exc.exit_code
    return result.exit_code or 0


def _top(args: argparse.Namespace) -> int:
    from . import _live, _top
    from ._errors import NetstatsError

    if args.format != "text" and not args.once:
        print("netstats top: error: --format json is for one snapshot: add --once", file=sys.stderr)
        return 2
    try:
        if args.once:
            sys.stdout.write(_top.once(args.pid, args.format))
            return 0
        if not _live.available():
            print(f"netstats top: the live view {_live.MISSING} (or use --once)", file=sys.stderr)
            return 2
        _top.snapshot(args.pid)  # a PID that is not there or not the user's: said before drawing
        return _live.top(args.pid)
    except NetstatsError as exc:
        print(f"netstats top: {exc}", file=sys.stderr)
        return 1


def _report(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:
            data = json.load(f)
        run = Run.from_json(data)
    except OSError as exc:
        problem = exc.strerror or str(exc)
        print(f"netstats report: cannot read {args.file}: {problem}", file=sys.stderr)
        return 2
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or not a run (BadRun)
        what = str(exc) if isinstance(exc, BadRun) else f"not JSON ({exc})"
        if isinstance(exc, RecursionError):
            what = "not a netstats run file (nested too deep)"
        print(
            f"netstats report: {args.file}: {what.splitlines()[0] if what else 'malformed'}", file=sys.stderr
        )
        return 2
    for path in (args.output, args.html):
        if path and path != "-" and unwritable(path):
            print(f"netstats report: cannot write {path}: {unwritable(path)}", file=sys.stderr)
            return 2
    deliver(run, _options(args), "netstats report", sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
