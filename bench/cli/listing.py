"""``bench list``: the registered methods, models, datasets, presets or named plans, one per entry,
each description in full, wrapped to the terminal's width (``$COLUMNS`` when piped)."""

from __future__ import annotations

import argparse
import shutil
import textwrap
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


MIN_TEXT_WIDTH = 30  # characters of description per line, however narrow the terminal


def handle(args: argparse.Namespace) -> int:
    print(format_listing(LISTINGS[args.what](), shutil.get_terminal_size().columns))
    return 0


def format_listing(listing: dict[str, str], columns: int) -> str:
    """Names in a column, each description wrapped to ``columns`` with a hanging indent: never cut."""
    indent = max(map(len, listing)) + 2
    width = max(columns - 1, indent + MIN_TEXT_WIDTH)  # the last column is left free: no auto-wrap at the edge
    entries = []
    for name, description in listing.items():
        entries.append(
            textwrap.fill(
                description,
                width,
                initial_indent=f"{name:<{indent}}",
                subsequent_indent=" " * indent,
                break_on_hyphens=False,
                break_long_words=False,
            )
        )
    return "\n".join(entries)


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

    return {name: preset_description(name, preset_path(name).read_text()) for name in PRESETS}


def preset_description(name: str, text: str) -> str:
    """The preset file's leading comment block, joined into one paragraph, less its ``name:`` prefix."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines).removeprefix(f"{name}:").strip()


def _plans() -> dict[str, str]:
    from bench.named_plans import NAMED_PLANS

    return {f"{plan} ({model})": f"Li et al. 2017 {model} plan {plan[-1].upper()}" for model, plan in NAMED_PLANS}


# each listing imports only what it shows: `list presets` needs no torch
LISTINGS = {"methods": _methods, "models": _models, "datasets": _datasets, "presets": _presets, "plans": _plans}
