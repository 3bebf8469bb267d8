"""``bench run``: train or reuse the dense baseline, run each method over the seeds, print the table."""

from __future__ import annotations

import argparse
from typing import Any

from bench.cli.common import DATA_ENV, DEFAULT_PRESET, add_command, add_settings, run_flags
from bench.errors import BenchError

NAME = "run"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "train/reuse the dense baseline, run each method, print the table",
        "examples:\n"
        "  python -m bench run --methods l1,slim --model resnet20 --preset smoke --data-dir ../shared/data\n"
        "  python -m bench run --methods l1 --model resnet56 --plan l1-a --preset paper --seeds 0,1,2\n"
        "  python -m bench run --methods slim --model vgg19 --set prune.channel_fraction=0.7 "
        "--set method.slim.params.lam=1e-4\n\n"
        "Settings layer as preset < --config FILE.toml < flags < --set key=value.\n"
        f"The data root defaults to ${DATA_ENV}.",
    )
    p.add_argument("--methods", required=True, help="comma-separated method names (see 'list methods')")
    p.add_argument("--model", required=True, help="a model name (see 'list models')")
    add_settings(p, seeds="comma-separated seeds, e.g. 0,1,2 (default 0)")
    p.add_argument("--plan", help="a named pruning plan instead of a FLOPs target, e.g. l1-a")
    p.add_argument(
        "--budget",
        type=int,
        help="matched-budget mode: every method trains this many epochs in all (dense baseline included "
        "when it starts from it); sparsity and fine-tune phases are scaled to fit",
    )
    p.add_argument("--published", action="store_true", help="print the published figures beside ours")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines stay)")
    p.set_defaults(preset=None)  # None: not given, so the plan can say the default preset was used


def handle(args: argparse.Namespace) -> int:
    from bench import config

    flags = run_flags(args)
    preset = args.preset or DEFAULT_PRESET
    cfg = config.resolve(preset, args.config, flags, args.set)
    if not cfg.methods:
        raise BenchError("--methods is empty; name at least one method (see 'python -m bench list methods')")
    from bench.cli.present import table_printer  # after validation: a config error needs no heavy import
    from bench.runner import PresetChoice, run

    def variant(name: str) -> config.RunConfig:  # the same command under another preset
        return config.resolve(name, args.config, flags, args.set)

    choice = PresetChoice(defaulted=args.preset is None, variant=variant)
    run(cfg, progress=not args.no_progress, present=table_printer(), choice=choice)
    return 0
