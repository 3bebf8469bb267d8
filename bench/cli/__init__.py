"""``python -m bench``: list, profile, run, speed, sparsity, sweep, sweep-bench and report.

One module per command, each with its parser and its handler together: ``NAME``,
``add_parser(subparsers)`` and ``handle(args) -> int``. What they share (the parser class, the
settings flags of ``run`` and ``sweep``, comma-separated values) is in :mod:`bench.cli.common`.
Heavy imports (torch, mlflow, optuna) happen inside handlers, after the arguments are checked.

Errors a user can cause print one line, ``error: ...``, and exit with code 2, no traceback.
Ctrl-C exits 130 and SIGTERM 143, with one line that says whether the same command run again
resumes (this process saved or restored a checkpoint: :mod:`bench.checkpoint`) or starts over;
whatever ends a command, no MLflow run it opened is left RUNNING, and a Ctrl-C that ``uv run``
delivers twice is handled once (:mod:`bench.lifecycle`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench import lifecycle
from bench.cli import clean, export, listing, profile, report, run, sparsity, speed, sweep, sweep_scaling
from bench.cli.common import Parser, formatter
from bench.errors import BenchError, Terminated

MODULES = (listing, profile, run, speed, sparsity, export, sweep, sweep_scaling, report, clean)  # the order of --help
COMMANDS = {module.NAME: module.handle for module in MODULES}


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m bench",
        formatter_class=formatter,
        description="Reproducible benchmark harness for structured pruning of CNNs.",
        epilog="examples:\n  python -m bench list methods\n  python -m bench profile --model resnet56 --plan l1-a\n"
        "  python -m bench run --methods l1,slim --model resnet20 --preset smoke --data-dir ../shared/data\n"
        "  python -m bench speed --model resnet20 --data-dir ../shared/data\n"
        "  python -m bench sparsity RUN_ID",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in MODULES:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with lifecycle.command(exits=True):
            return COMMANDS[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(stopped_line("terminated (SIGTERM)"), file=sys.stderr)
        return lifecycle.SIGTERM_EXIT
    except KeyboardInterrupt:
        print(stopped_line("interrupted"), file=sys.stderr)
        return lifecycle.SIGINT_EXIT


def stopped_line(how: str) -> str:
    """The one line of a stopped command: resume when this process saved (or restored) something a
    rerun reuses, else say that nothing was saved. ``bench.checkpoint`` holds torch, so it is
    consulted only when it was imported: nothing can have been saved before."""
    checkpoint = sys.modules.get("bench.checkpoint")
    saved = checkpoint.last_resume_point() if checkpoint is not None else None
    if saved is None:
        return f"{how} before anything was saved; running the same command again starts over"
    return f"{how}; run the same command again to resume (saved: {saved})"
