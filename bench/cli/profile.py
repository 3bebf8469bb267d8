"""``bench profile``: params, FLOPs (MACs) and optionally latency of one model (dense, and pruned by
a named plan, side by side with the speed-up), see :mod:`bench.benchmarks.profile`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.cli.common import add_command, int_list

NAME = "profile"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "params, FLOPs (MACs) and optionally latency of a model",
        "examples:\n  python -m bench profile --model resnet56\n"
        "  python -m bench profile --model resnet56 --plan l1-b --latency          # dense, pruned, speed-up\n"
        "  python -m bench profile --model resnet56 --plan l1-b --latency --batch-size 1,64\n"
        "  python -m bench profile --model timm:resnet18 --dataset tinyimagenet --json",
    )
    p.add_argument("--model", required=True, help="a model name (see 'list models')")
    p.add_argument("--dataset", default="cifar10", help="sets classes and input size (default cifar10)")
    p.add_argument("--plan", help="apply a named pruning plan first, e.g. l1-a (see 'list plans')")
    p.add_argument(
        "--latency", action="store_true", help="also measure inference latency (with --plan: dense, pruned, speed-up)"
    )
    p.add_argument("--batch-size", default="64", help="latency batch size(s), comma-separated (default 64)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="latency device (default cpu)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats after 10 warm-up runs (default 30)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def handle(args: argparse.Namespace) -> int:
    from bench.benchmarks.profile import LatencyRequest, format_profile, profile

    batches = tuple(int_list(args.batch_size, "--batch-size"))
    latency = LatencyRequest(batches, args.device, args.repeats)  # checked even without --latency
    report = profile(args.model, args.dataset, args.plan, latency if args.latency else None)
    print(json.dumps(report) if args.json else format_profile(report))
    return 0
