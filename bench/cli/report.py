"""``bench report``: paper-style tables and figures from stored runs (MLflow or an export), by
:mod:`reports.report`; reads stored runs only and never imports torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.cli.common import add_command, split

NAME = "report"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "paper-style tables and figures from stored runs (MLflow or an export)",
        "examples:\n  python -m bench report --format md\n"
        "  python -m bench report --experiment issue3-comparison --format latex --out paper/ --published\n"
        "  python -m bench report --sweep ffr-resnet20-cifar10-smoke --format html --out report/\n"
        "  python -m bench report --runs PARENT_RUN_ID --compare-to l1\n"
        "  python -m bench report --group-by model,dense.epochs --trials\n"
        "  python -m bench report --from runs.parquet --format csv\n\n"
        "Reads stored runs only: nothing is recomputed and torch is never imported.",
    )
    p.add_argument("--experiment", help="all runs of this MLflow experiment (default 'bench')")
    p.add_argument("--sweep", help="the trials of this sweep (Optuna study name)")
    p.add_argument("--runs", help="comma-separated MLflow run ids; a parent run stands for its children")
    p.add_argument("--from", dest="export", help="read runs from a CSV/Parquet export instead of MLflow")
    p.add_argument("--export", dest="save_export", help="also write the runs read as CSV/Parquet (by extension)")
    p.add_argument("--format", default="md", choices=["md", "latex", "csv", "html"], help="(default md)")
    p.add_argument("--out", help="write report.<ext> and figures (PNG, PDF) here (html: default results/reports)")
    p.add_argument(
        "--group-by",
        default="model,dataset",
        help="table groups: run columns (model, dataset, data_label, target, study, method, ...) or protocol "
        "settings (dense.epochs, finetune.lr, ...) (default model,dataset)",
    )
    p.add_argument(
        "--trials", action="store_true", help="show sweep trials beside the runs (default: left out, counted)"
    )
    p.add_argument("--published", action="store_true", help="interleave the published rows, marked")
    p.add_argument("--compare-to", help="paired difference of each method against this one, 95%% CI over seeds")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite)")
    p.add_argument("--results-dir", default="results", help="where the local MLflow store lives (default results/)")


def handle(args: argparse.Namespace) -> int:
    from bench.tracking import resolve_tracking_uri
    from reports.report import ReportRequest, parse_ids, run_report

    uri = None if args.export else resolve_tracking_uri(args.tracking_uri, Path(args.results_dir).resolve())
    request = ReportRequest(
        tracking_uri=uri,
        export=args.export,
        experiment=args.experiment,
        sweep=args.sweep,
        run_ids=parse_ids(args.runs),
        fmt=args.format,
        out=args.out,
        group_by=tuple(split(args.group_by)),
        published=args.published,
        compare_to=args.compare_to,
        save_export=args.save_export,
        trials=args.trials,
    )
    run_report(request)
    return 0
