"""``bench export``: a finished run's model as files loadable without bench (:mod:`bench.export`):
safetensors weights with the architecture as JSON, a ``torch.export`` program, or ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.cli.common import add_command, split

NAME = "export"
FORMAT_NAMES = ("safetensors", "pt2", "onnx")  # bench.export.FORMATS, named here so --help needs no torch


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "write a run's pruned model as safetensors, a torch.export program (.pt2) or ONNX",
        "examples:\n  python -m bench export 1a2b3c4d5e6f... --format pt2\n"
        "  python -m bench export RUN_ID --format safetensors,pt2,onnx --out exported/\n"
        "  python -m bench export RUN_ID --tracking-uri http://127.0.0.1:5000\n\n"
        "RUN_ID is a method (or dense) run: 'bench run' prints each one's id. Every export writes\n"
        "<model>-<method>-s<seed>-<run>.json beside it: the model, classes, input size and\n"
        "normalisation, every layer's channels and the pruning plans. Load without bench:\n"
        "  torch.export.load('x.pt2').module()(images)\n"
        "  safetensors.torch.load_file('x.safetensors')   # weights only: rebuild the architecture first\n"
        "  onnxruntime.InferenceSession('x.onnx').run(None, {'input': images})",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the MLflow run id of a finished method or dense run")
    p.add_argument(
        "--format",
        default="pt2",
        help=f"comma-separated, of {', '.join(FORMAT_NAMES)} (default pt2; onnx needs 'uv sync --extra onnx')",
    )
    p.add_argument("--out", help="the folder written to (default results/exports/, under --results-dir)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else under results/)")
    p.add_argument("--results-dir", default="results", help="where the local store lives (default results/)")


def handle(args: argparse.Namespace) -> int:
    from bench.export import check_formats, export

    formats = check_formats(split(args.format))
    out = args.out or Path(args.results_dir) / "exports"
    for path in export(args.run_id, formats, out, args.tracking_uri, args.results_dir):
        print(f"wrote {path}")
    return 0
