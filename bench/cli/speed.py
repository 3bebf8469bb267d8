"""``bench speed``: our loop, data pipeline, pruned latency and FFR overhead against references, as
ratios; see :mod:`bench.benchmarks.speed`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.cli.common import DATA_ENV, add_command, data_root

NAME = "speed"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "benchmark: our loop vs bare PyTorch, batched augmentation vs DataLoader",
        "examples:\n  python -m bench speed --data-dir ../shared/data\n"
        "  python -m bench speed --model resnet56 --steps 20 --json",
    )
    p.add_argument("--model", default="resnet20", help="model for the training-step comparison (default resnet20)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per loop per repeat (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of each loop (default 3)")
    p.add_argument("--images", type=int, default=4096, help="images for the data-pipeline comparison (default 4096)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline (default 2)")
    p.add_argument("--ffr-model", default="resnet56", help="model for the FFR-overhead comparison (default resnet56)")
    p.add_argument("--latency-repeats", type=int, default=30, help="timed forwards per latency cell (default 30)")
    p.add_argument("--data-dir", help=f"root holding cifar10-jpeg/ (default ${DATA_ENV})")
    p.add_argument("--results-dir", default="results", help="for the decoded-image cache (default results/)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def handle(args: argparse.Namespace) -> int:
    from bench.benchmarks.speed import format_speed, speed

    report = speed(
        args.model,
        args.device,
        args.batch_size,
        args.steps,
        args.repeats,
        args.images,
        args.workers,
        data_root(args.data_dir),
        args.results_dir,
        args.ffr_model,
        args.latency_repeats,
    )
    print(json.dumps(report, indent=1) if args.json else format_speed(report))
    return 0
