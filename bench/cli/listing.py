"""``bench list``: the registered methods, models, datasets, presets or named plans, one per line."""

from __future__ import annotations

import argparse
from typing import Any

from bench.cli.common import add_command

NAME = "list"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "list methods, models, datasets, presets or named plans",
        "examples:\n  python -m bench list methods\n  python -m bench list models",
    )
    p.add_argument("what", choices=["methods", "models", "datasets", "presets", "plans"])


def handle(args: argparse.Namespace) -> int:
    listing = LISTINGS[args.what]()
    width = max(map(len, listing)) + 2
    for name, description in listing.items():
        print(f"{name:<{width}}{description}")
    return 0


def _methods() -> dict[str, str]:
    from bench.controls import DESCRIPTION, SCRATCH
    from bench.registry import list_methods

    return {**list_methods(), SCRATCH: DESCRIPTION}


def _models() -> dict[str, str]:
    from bench.models import list_models

    return list_models()


def _datasets() -> dict[str, str]:
    from bench.datasets import DATASETS

    return DATASETS


def _presets() -> dict[str, str]:
    from bench.config import PRESETS, preset_path

    return {name: preset_path(name).read_text().splitlines()[0].lstrip("# ") for name in PRESETS}


def _plans() -> dict[str, str]:
    from bench.named_plans import NAMED_PLANS

    return {f"{plan} ({model})": f"Li et al. 2017 {model} plan {plan[-1].upper()}" for model, plan in NAMED_PLANS}


# each listing imports only what it shows: `list presets` needs no torch
LISTINGS = {"methods": _methods, "models": _models, "datasets": _datasets, "presets": _presets, "plans": _plans}
