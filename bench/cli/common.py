"""What the commands share: the parser class, the settings flags of ``run`` and ``sweep``, and the
parsing of comma-separated values. Torch-free: importing a command module must stay cheap."""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn

from bench.errors import BenchError

DATA_ENV = "BENCH_DATA_DIR"
DEFAULT_PRESET = "quick"  # what --preset means when it is not given


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def formatter(prog: str) -> argparse.HelpFormatter:
    """Help keeps the epilog's line breaks (the examples) and aligns help text at column 36."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=36)


def add_command(subparsers: Any, name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand's parser, with the examples of ``epilog`` kept as written."""
    return subparsers.add_parser(name, help=summary, formatter_class=formatter, epilog=epilog)


def data_root(flag: str | None) -> str | None:
    """``--data-dir``, else ``$BENCH_DATA_DIR``, else None."""
    return flag or os.environ.get(DATA_ENV)


def add_settings(p: argparse.ArgumentParser, *, seeds: str) -> None:
    """The settings flags that ``run`` and ``sweep`` share (they build a RunConfig alike)."""
    p.add_argument("--dataset", help="cifar10 (default), cifar100, tinyimagenet or imagefolder:<path>")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="smoke, quick (default), paper, or a copied preset .toml")
    p.add_argument("--seeds", help=seeds)
    p.add_argument("--target-flops-reduction", type=float, help="fraction of MACs to remove, in [0, 1)")
    p.add_argument("--data-dir", help=f"root holding the datasets (default ${DATA_ENV})")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite under results/)"
    )
    p.add_argument("--results-dir", help="where caches, checkpoints and the local stores live (default results/)")
    p.add_argument("--experiment", help="MLflow experiment name (default 'bench')")
    p.add_argument("--config", help="a TOML file of settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any setting, repeatable")


def run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The explicit CLI flags of ``run`` (or ``sweep``) as a config layer (only what was given)."""
    flags: dict[str, Any] = {"model": args.model}
    if getattr(args, "methods", None) is not None:
        flags["methods"] = split(args.methods)
    if data := _data_flags(args):
        flags["data"] = data
    if args.seeds:
        flags["seeds"] = int_list(args.seeds, "--seeds")
    if prune := _prune_flags(args):
        flags["prune"] = prune
    if getattr(args, "published", False):
        flags["published"] = True
    if getattr(args, "budget", None) is not None:
        flags["budget"] = args.budget
    for key in ("tracking_uri", "results_dir", "experiment"):
        if getattr(args, key):
            flags[key] = getattr(args, key)
    return flags


def _data_flags(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if args.dataset:
        data["name"] = args.dataset
    if root := data_root(args.data_dir):
        data["root"] = root
    return data


def _prune_flags(args: argparse.Namespace) -> dict[str, Any]:
    prune: dict[str, Any] = {}
    if args.target_flops_reduction is not None:
        prune["target_flops_reduction"] = args.target_flops_reduction
    if getattr(args, "plan", None):
        prune["plan"] = args.plan
    return prune


def split(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def int_list(text: str, flag: str) -> list[int]:
    """Comma-separated integers of ``flag``; a bad one is a user error naming the flag."""
    return [parse_int(part, flag) for part in split(text)]


def parse_int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated integers, got '{text}'") from None


def parse_float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated numbers, got '{text}'") from None
