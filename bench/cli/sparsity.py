"""``bench sparsity``: raw and BN-folded sparsity curves of a stored run, or of the runs under a
parent averaged per method (one column per method, the mean over its seeds; ``--per-run`` for one
column per run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.cli.common import add_command

NAME = "sparsity"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "raw and BN-folded sparsity curves of a stored run, or per method (mean over seeds) under a parent",
        "examples:\n  python -m bench sparsity 8a03a04ca685478cb57846ec12bef49b\n"
        "  python -m bench sparsity RUN_ID --tracking-uri http://127.0.0.1:5000 --json",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="an MLflow run id; a parent run shows all its nested runs")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else under results/)")
    p.add_argument("--results-dir", default="results", help="where the local store lives (default results/)")
    p.add_argument("--per-run", action="store_true", help="one column per run instead of the mean per method")
    p.add_argument("--every", type=int, default=4, help="print every Nth eps of the grid (default 4: one per decade)")
    p.add_argument("--json", action="store_true", help="print one JSON object (every eps)")


def handle(args: argparse.Namespace) -> int:
    from bench.curves import format_curves, mean_by_method
    from bench.errors import BenchError
    from bench.sparsity import stored_curves
    from bench.tracking import resolve_tracking_uri

    if args.every < 1:
        raise BenchError(f"--every must be a positive integer, got {args.every}")
    curves = stored_curves(resolve_tracking_uri(args.tracking_uri, Path(args.results_dir).resolve()), args.run_id)
    shown = curves if args.per_run else mean_by_method(curves)
    if args.json:
        print(json.dumps(shown))
    else:
        print(format_curves(shown, args.every))
    return 0
