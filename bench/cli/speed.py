"""``bench speed``: our loop, data pipeline, pruned latency and FFR overhead against references, as
ratios; see :mod:`bench.benchmarks.speed`. An estimate of the whole first, then each section as it
finishes."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import lifecycle
from bench.cli.common import DATA_ENV, add_command, data_root

NAME = "speed"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "benchmark: our loop vs bare PyTorch, batched augmentation vs DataLoader",
        "examples:\n  python -m bench speed --data-dir ../shared/data\n"
        "  python -m bench speed --model resnet56 --steps 20 --json\n\n"
        "It prints an estimated time first, then each section (a)-(d) as it finishes; Ctrl-C keeps\n"
        "the finished sections (and their JSON under --json) and says which were not measured.",
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
    p.add_argument("--json", action="store_true", help="print one JSON object (the sections' text goes to stderr)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the image decode of a first use)")


def handle(args: argparse.Namespace) -> int:
    """Measure section by section, printing each as it finishes (to stderr under --json, whose
    stdout is the JSON object). Ctrl-C keeps what was measured: it is printed (and written as JSON
    under --json), one line says what was not measured, and the exit code is 130. There is no
    resume: a new run measures everything again."""
    from bench.benchmarks.speed import SpeedSettings

    settings = SpeedSettings(
        args.model, args.device, args.batch_size, args.steps, args.repeats, args.images, args.workers,
        data_root(args.data_dir), args.results_dir, args.ffr_model, args.latency_repeats,
        progress=not args.no_progress,
    )  # fmt: skip
    settings.check()
    out = sys.stderr if args.json else sys.stdout
    report: dict[str, Any] = {}
    try:
        _measure(settings, report, lambda text: print(text, file=out, flush=True))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # `uv run` delivers Ctrl-C twice: one is enough
        return _interrupted(report, args.json)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


def _measure(settings: Any, report: dict[str, Any], say: Callable[[str], None]) -> None:
    """The header, the estimate, then each section into ``report`` and printed when it finishes."""
    from bench.benchmarks import speed, speed_eta, speed_text

    bench = speed.prepare(settings, report, on_header=lambda: say(speed_text.format_header(report)))
    estimated = speed_eta.estimate(bench)
    report["estimated_seconds"] = estimated
    say(speed_text.format_estimate(estimated))
    report["seconds"] = {}
    for section in speed.SECTIONS:
        start = time.perf_counter()
        result = speed.measure_section(bench, section)
        took = time.perf_counter() - start
        report[section.key], report["seconds"][section.key] = result, took
        say(speed_text.format_section(section, result))
        say(speed_text.format_timing(section, took, estimated.get(section.key)))


def _interrupted(report: dict[str, Any], as_json: bool) -> int:
    """The sections measured so far stay printed; under --json they are the JSON object."""
    from bench.benchmarks.speed import SECTIONS
    from bench.benchmarks.speed_text import format_interrupted

    if as_json:
        left = [s.key for s in SECTIONS if s.key not in report]
        print(json.dumps({**report, "interrupted": True, "not_measured": left}, indent=1), flush=True)
    print(format_interrupted(report), file=sys.stderr, flush=True)
    return lifecycle.SIGINT_EXIT
