"""The command line: a thin layer over the API (run, report, demo)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from ._report import FORMATS, GROUPS, Run, render, write

EXAMPLES = """\
examples:
  netstats run script.py --its-own-flag     run a script, report on stderr
  netstats run -m http.server 8000          run a module
  netstats run -o run.json --format json app.py
  netstats report run.json --by host        re-render a saved run
  netstats demo                             see it all offline, in seconds
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="text", help="report format (default text)")
    parser.add_argument("--by", choices=GROUPS, help="group connections by host, origin, caller or pid")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (default: stderr)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="netstats",
        description="What a Python program does on the network, per connection.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{run,report,demo}", parser_class=_Parser)
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
    _output_options(run)
    run.add_argument("program", nargs=argparse.REMAINDER, help="script.py and its arguments")
    report = commands.add_parser("report", help="re-render a run saved with --format json")
    report.add_argument("file", help="a JSON file written by netstats run --format json")
    _output_options(report)
    commands.add_parser("demo", help="a loopback HTTP and HTTPS server, fetched and reported")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "run":
        return _run(parser, args)
    if args.command == "report":
        return _report(args)
    if args.command == "demo":
        from ._demo import run as demo

        return demo()
    parser.print_help(sys.stderr)
    return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ._errors import NoSuchProgram
    from ._run import run_program

    if args.module:
        target, rest = args.module, args.program
    elif args.program:
        target, rest = args.program[0], args.program[1:]
    else:
        parser.exit(2, "netstats run: error: give a script or -m module (see netstats run --help)\n")
    try:
        result = run_program(target, rest, module=bool(args.module), servers=args.servers)
    except NoSuchProgram as exc:
        print(f"netstats run: {exc}", file=sys.stderr)
        return exc.exit_code
    write(render(result, args.format, args.by), args.output)
    return result.exit_code or 0


def _report(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:
            run = Run.from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"netstats report: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    write(render(run, args.format, args.by), args.output, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
