"""``bench sweep-bench``: trials per minute with 1 and 2 local sweep workers, side by side; see
:mod:`bench.benchmarks.sweep_scaling`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from bench.cli.common import DATA_ENV, add_command, data_root, int_list
from bench.errors import BenchError

NAME = "sweep-bench"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "trials per minute with 1 and 2 local sweep workers, side by side",
        "examples:\n  python -m bench sweep-bench --data-dir ../shared/data\n"
        "  python -m bench sweep-bench --trials 12 --workers 1,2 --json",
    )
    p.add_argument("--trials", type=int, default=8, help="tiny trials per worker count (default 8)")
    p.add_argument("--workers", default="1,2", help="worker counts to compare, first is the base (default 1,2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: cores // workers)")
    p.add_argument("--data-dir", help=f"root holding the datasets (default ${DATA_ENV})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", action="store_true", help="Optuna's own INFO log lines too (default: warnings only)")


def handle(args: argparse.Namespace) -> int:
    from bench.benchmarks.sweep_scaling import format_scaling, worker_scaling
    from bench.sweeps.output import optuna_logging

    optuna_logging(args.verbose)
    counts = tuple(int_list(args.workers, "--workers"))
    if not counts or min(counts) < 1:
        raise BenchError(f"--workers takes positive worker counts, got '{args.workers}'")
    with contextlib.redirect_stdout(sys.stderr):  # the baseline's epoch lines; stdout is the report (--json)
        report = worker_scaling(data_root(args.data_dir), args.trials, counts, args.threads, args.verbose)
    print(json.dumps(report, indent=1) if args.json else format_scaling(report))
    return 0
