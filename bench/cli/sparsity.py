"""``bench sparsity``: unstructured and structured sparsity curves of a stored run (or of each run
under a parent)."""

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
        "unstructured and structured sparsity curves of a stored run (or of each run under a parent)",
        "examples:\n  python -m bench sparsity 8a03a04ca685478cb57846ec12bef49b\n"
        "  python -m bench sparsity RUN_ID --tracking-uri http://127.0.0.1:5000 --json",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="an MLflow run id; a parent run shows all its nested runs")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else under results/)")
    p.add_argument("--results-dir", default="results", help="where the local store lives (default results/)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def handle(args: argparse.Namespace) -> int:
    from bench.sparsity import format_curves, stored_curves
    from bench.tracking import resolve_tracking_uri

    curves = stored_curves(resolve_tracking_uri(args.tracking_uri, Path(args.results_dir).resolve()), args.run_id)
    if args.json:
        print(json.dumps(curves))
    else:
        print("fraction of weights with |w| < eps (unstr.) and of conv filters with mean |w| < eps (struct.)")
        print(format_curves(curves))
    return 0
