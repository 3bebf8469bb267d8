"""``python -m bench``: list, profile, run, speed, sparsity and sweep.

Errors a user can cause print one line, ``error: ...``, and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from bench.errors import BenchError

DATA_ENV = "BENCH_DATA_DIR"


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=36)


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m bench",
        formatter_class=_formatter,
        description="Reproducible benchmark harness for structured pruning of CNNs.",
        epilog="examples:\n  python -m bench list methods\n  python -m bench profile --model resnet56 --plan l1-a\n"
        "  python -m bench run --methods l1,slim --model resnet20 --preset smoke --data-dir ../shared/data\n"
        "  python -m bench speed --model resnet20 --data-dir ../shared/data\n"
        "  python -m bench sparsity RUN_ID",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_list(sub)
    _add_profile(sub)
    _add_run(sub)
    _add_speed(sub)
    _add_sparsity(sub)
    _add_sweep(sub)
    _add_sweep_bench(sub)
    _add_report(sub)
    return parser


def _add_list(sub) -> None:
    p = sub.add_parser(
        "list",
        help="list methods, models, datasets, presets or named plans",
        formatter_class=_formatter,
        epilog="examples:\n  python -m bench list methods\n  python -m bench list models",
    )
    p.add_argument("what", choices=["methods", "models", "datasets", "presets", "plans"])


def _add_profile(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="params, FLOPs (MACs) and optionally latency of a model",
        formatter_class=_formatter,
        epilog="examples:\n  python -m bench profile --model resnet56\n"
        "  python -m bench profile --model resnet56 --plan l1-b --latency\n"
        "  python -m bench profile --model timm:resnet18 --dataset tinyimagenet --json",
    )
    p.add_argument("--model", required=True, help="a model name (see 'list models')")
    p.add_argument("--dataset", default="cifar10", help="sets classes and input size (default cifar10)")
    p.add_argument("--plan", help="apply a named pruning plan first, e.g. l1-a (see 'list plans')")
    p.add_argument("--latency", action="store_true", help="also measure inference latency")
    p.add_argument("--batch-size", type=int, default=64, help="latency batch size (default 64)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="latency device (default cpu)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats after 10 warm-up runs (default 30)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="train/reuse the dense baseline, run each method, print the table",
        formatter_class=_formatter,
        epilog="examples:\n"
        "  python -m bench run --methods l1,slim --model resnet20 --preset smoke --data-dir ../shared/data\n"
        "  python -m bench run --methods l1 --model resnet56 --plan l1-a --preset paper --seeds 0,1,2\n"
        "  python -m bench run --methods slim --model vgg19 --set prune.channel_fraction=0.7 "
        "--set method.slim.params.lam=1e-4\n\n"
        "Settings layer as preset < --config FILE.toml < flags < --set key=value.\n"
        f"The data root defaults to ${DATA_ENV}.",
    )
    p.add_argument("--methods", required=True, help="comma-separated method names (see 'list methods')")
    p.add_argument("--model", required=True, help="a model name (see 'list models')")
    _add_settings(p, seeds="comma-separated seeds, e.g. 0,1,2 (default 0)")
    p.add_argument("--plan", help="a named pruning plan instead of a FLOPs target, e.g. l1-a")
    p.add_argument("--published", action="store_true", help="print the published figures beside ours")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines stay)")


def _add_settings(p: argparse.ArgumentParser, *, seeds: str) -> None:
    """The settings flags that ``run`` and ``sweep`` share (they build a RunConfig alike)."""
    p.add_argument("--dataset", help="cifar10 (default), cifar100, tinyimagenet or imagefolder:<path>")
    p.add_argument("--preset", default="quick", help="smoke, quick (default), paper, or a copied preset .toml")
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


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="Optuna search over a method's hyperparameters, or a grid; local or distributed workers",
        formatter_class=_formatter,
        epilog="examples:\n"
        "  python -m bench sweep --method ffr --model resnet20 --preset smoke --trials 6 --workers 2\n"
        "  python -m bench sweep --method ffr --model resnet56 --trials 40 --objectives acc,flops\n"
        "  python -m bench sweep --method ffr --model resnet56 --trials 40 --storage postgresql://bench@db:5432/optuna\n"
        "  python -m bench sweep --grid grid.toml --workers 2\n"
        "  python -m bench sweep --method ffr --model resnet20 --preset smoke --best 2 --seeds 0,1,2\n\n"
        "A trial is one full pipeline run, selected on the validation split and logged to MLflow as a\n"
        "child of the sweep's parent run. Run the same command on several machines against one\n"
        "PostgreSQL --storage (and one MLflow server) to share a study; killed workers' trials are retried.",
    )
    p.add_argument("--method", help="the method whose search space is sampled (see 'list methods')")
    p.add_argument("--model", help="a model name (see 'list models')")
    p.add_argument("--trials", type=int, default=20, help="trials to run in the study (default 20)")
    p.add_argument("--objectives", default="acc", help="acc (val accuracy at the FLOPs target) or acc,flops")
    p.add_argument("--study", help="study name (default: method-model-dataset-preset, or the grid file's name)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<results>/optuna.db)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"], help="(default median)")
    p.add_argument(
        "--target-range", default="0.2,0.8", help="FLOPs reductions searched with acc,flops (default 0.2,0.8)"
    )
    p.add_argument("--grid", help="a grid TOML: models x datasets x methods x targets x seeds")
    p.add_argument("--best", type=int, help="re-run the best K trials over --seeds on the test protocol")
    _add_settings(p, seeds="the sweep's seed (the first given), or the seeds of --best (default 0)")
    p.add_argument("--no-progress", action="store_true", help="accepted for symmetry: trials print epoch lines only")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between a trial's heartbeats (default 10)")
    p.add_argument("--grace", type=int, default=60, help="seconds without one before a trial is retried (default 60)")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run as a worker from this spec file
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="paper-style tables and figures from stored runs (MLflow or an export)",
        formatter_class=_formatter,
        epilog="examples:\n  python -m bench report --format md\n"
        "  python -m bench report --experiment issue3-comparison --format latex --out paper/ --published\n"
        "  python -m bench report --sweep ffr-resnet20-cifar10-smoke --format html --out report/\n"
        "  python -m bench report --runs PARENT_RUN_ID --compare-to l1\n"
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
    p.add_argument("--group-by", default="model,dataset", help="table groups (default model,dataset)")
    p.add_argument("--published", action="store_true", help="interleave the published rows, marked")
    p.add_argument("--compare-to", help="paired difference of each method against this one, 95%% CI over seeds")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite)")
    p.add_argument("--results-dir", default="results", help="where the local MLflow store lives (default results/)")


def _add_sweep_bench(sub) -> None:
    p = sub.add_parser(
        "sweep-bench",
        help="trials per minute with 1 and 2 local sweep workers, side by side",
        formatter_class=_formatter,
        epilog="examples:\n  python -m bench sweep-bench --data-dir ../shared/data\n"
        "  python -m bench sweep-bench --trials 12 --workers 1,2 --json",
    )
    p.add_argument("--trials", type=int, default=8, help="tiny trials per worker count (default 8)")
    p.add_argument("--workers", default="1,2", help="worker counts to compare, first is the base (default 1,2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: cores // workers)")
    p.add_argument("--data-dir", help=f"root holding the datasets (default ${DATA_ENV})")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_speed(sub) -> None:
    p = sub.add_parser(
        "speed",
        help="benchmark: our loop vs bare PyTorch, batched augmentation vs DataLoader",
        formatter_class=_formatter,
        epilog="examples:\n  python -m bench speed --data-dir ../shared/data\n"
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


def _add_sparsity(sub) -> None:
    p = sub.add_parser(
        "sparsity",
        help="unstructured and structured sparsity curves of a stored run (or of each run under a parent)",
        formatter_class=_formatter,
        epilog="examples:\n  python -m bench sparsity 8a03a04ca685478cb57846ec12bef49b\n"
        "  python -m bench sparsity RUN_ID --tracking-uri http://127.0.0.1:5000 --json",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="an MLflow run id; a parent run shows all its nested runs")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else under results/)")
    p.add_argument("--results-dir", default="results", help="where the local store lives (default results/)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from bench.registry import list_methods

        listing = list_methods()
    elif args.what == "models":
        from bench.models import list_models

        listing = list_models()
    elif args.what == "datasets":
        from bench.datasets import DATASETS

        listing = DATASETS
    elif args.what == "presets":
        from bench.config import PRESETS, preset_path

        listing = {name: preset_path(name).read_text().splitlines()[0].lstrip("# ") for name in PRESETS}
    else:
        from bench.named_plans import NAMED_PLANS

        listing = {
            f"{plan} ({model})": f"Li et al. 2017 {model} plan {plan[-1].upper()}" for model, plan in NAMED_PLANS
        }
    width = max(map(len, listing)) + 2
    for name, description in listing.items():
        print(f"{name:<{width}}{description}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from bench.profile import profile

    report = profile(args.model, args.dataset, args.plan, args.latency, args.batch_size, args.device, args.repeats)
    if args.json:
        print(json.dumps(report))
    else:
        from bench.profile import format_profile

        print(format_profile(report))
    return 0


def run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The explicit CLI flags of ``run`` (or ``sweep``) as a config layer (only what was given)."""
    flags: dict[str, Any] = {"model": args.model}
    if getattr(args, "methods", None) is not None:
        flags["methods"] = _split(args.methods)
    data: dict[str, Any] = {}
    if args.dataset:
        data["name"] = args.dataset
    root = args.data_dir or os.environ.get(DATA_ENV)
    if root:
        data["root"] = root
    if data:
        flags["data"] = data
    if args.seeds:
        flags["seeds"] = [_int(s, "--seeds") for s in _split(args.seeds)]
    prune = {}
    if args.target_flops_reduction is not None:
        prune["target_flops_reduction"] = args.target_flops_reduction
    if getattr(args, "plan", None):
        prune["plan"] = args.plan
    if prune:
        flags["prune"] = prune
    if getattr(args, "published", False):
        flags["published"] = True
    for key in ("tracking_uri", "results_dir", "experiment"):
        if getattr(args, key):
            flags[key] = getattr(args, key)
    return flags


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated integers, got '{text}'") from None


def cmd_run(args: argparse.Namespace) -> int:
    from bench import config

    cfg = config.resolve(args.preset, args.config, run_flags(args), args.set)
    if not cfg.methods:
        raise BenchError("--methods is empty; name at least one method (see 'python -m bench list methods')")
    from bench.runner import run  # after validation: a config error needs none of the heavy imports

    run(cfg, progress=not args.no_progress)
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    from bench.speed import format_speed, speed

    report = speed(
        args.model,
        args.device,
        args.batch_size,
        args.steps,
        args.repeats,
        args.images,
        args.workers,
        args.data_dir or os.environ.get(DATA_ENV),
        args.results_dir,
        args.ffr_model,
        args.latency_repeats,
    )
    print(json.dumps(report, indent=1) if args.json else format_speed(report))
    return 0


def cmd_sparsity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.sparsity import format_curves, stored_curves
    from bench.tracking import resolve_tracking_uri

    curves = stored_curves(resolve_tracking_uri(args.tracking_uri, Path(args.results_dir).resolve()), args.run_id)
    if args.json:
        print(json.dumps(curves))
    else:
        print("fraction of weights with |w| < eps (unstr.) and of conv filters with mean |w| < eps (struct.)")
        print(format_curves(curves))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench import sweep

    if args.worker:
        sweep.work(sweep.SweepSpec.from_json(Path(args.worker).read_text()), args.worker_index)
        return 0
    if args.workers < 1:
        raise BenchError(f"--workers must be >= 1, got {args.workers}")
    cells = None
    if args.grid:
        grid = sweep.load_grid(args.grid)
        preset = grid.preset or args.preset
        cfg = _sweep_config(args, preset, [*grid.sets, *args.set], model=grid.models[0])
        study = args.study or grid.study or Path(args.grid).stem
        spec = _sweep_spec(args, cfg, study, "grid", None, len(grid.cells()))
        cells = grid.cells()
    else:
        if not args.method or not args.model:
            raise BenchError("sweep needs --method and --model (or --grid FILE); see 'python -m bench sweep --help'")
        from bench import registry

        registry.get_method(args.method)
        cfg = _sweep_config(args, args.preset, args.set, model=args.model)
        objectives = tuple(_split(args.objectives))
        study = args.study or "-".join(
            [args.method, args.model, cfg.data.name, Path(args.preset).stem]
            + (["pareto"] if len(objectives) > 1 else [])
        )
        spec = _sweep_spec(args, cfg, study, "search", args.method, args.trials, objectives)
    if args.best:
        seeds = tuple(_int(s, "--seeds") for s in _split(args.seeds or "0"))
        sweep.rerun_best(spec, args.best, seeds)
        return 0
    summary = sweep.run_sweep(spec, args.workers, cells)
    return 0 if summary.complete + summary.pruned > 0 or summary.failed == 0 else 1


def _sweep_config(args: argparse.Namespace, preset: str, sets: list[str], *, model: str):
    """The base RunConfig of every trial; a sweep runs one seed, the first of ``--seeds``."""
    from bench import config

    flags = {**run_flags(args), "model": model}
    if "seeds" in flags:
        flags["seeds"] = flags["seeds"][:1]
    return config.resolve(preset, args.config, flags, sets)


def _sweep_spec(args, cfg, study: str, kind: str, method: str | None, trials: int, objectives=("acc",)):
    from pathlib import Path

    from bench import sweep

    results = Path(cfg.results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    storage = args.storage or sweep.default_storage(results)
    lo, hi = (_float(x, "--target-range") for x in _split(args.target_range)) if "," in args.target_range else (0, 0)
    return sweep.SweepSpec(
        study=study,
        storage=storage,
        kind=kind,
        base=cfg.to_dict(),
        method=method,
        trials=trials,
        objectives=tuple(objectives),
        pruner=args.pruner,
        target_range=(lo, hi),
        sampler_seed=args.sampler_seed,
        heartbeat_s=args.heartbeat,
        grace_s=args.grace,
        threads=max(1, (os.cpu_count() or 1) // args.workers),
    )


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated numbers, got '{text}'") from None


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

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
        group_by=tuple(_split(args.group_by)),
        published=args.published,
        compare_to=args.compare_to,
        save_export=args.save_export,
    )
    run_report(request)
    return 0


def cmd_sweep_bench(args: argparse.Namespace) -> int:
    from bench.sweep_bench import format_scaling, worker_scaling

    counts = tuple(_int(c, "--workers") for c in _split(args.workers))
    if not counts or min(counts) < 1:
        raise BenchError(f"--workers takes positive worker counts, got '{args.workers}'")
    with contextlib.redirect_stdout(sys.stderr):  # the baseline's epoch lines; stdout is the report (--json)
        report = worker_scaling(args.data_dir or os.environ.get(DATA_ENV), args.trials, counts, args.threads)
    print(json.dumps(report, indent=1) if args.json else format_scaling(report))
    return 0


COMMANDS = {
    "list": cmd_list,
    "profile": cmd_profile,
    "run": cmd_run,
    "speed": cmd_speed,
    "sparsity": cmd_sparsity,
    "sweep": cmd_sweep,
    "sweep-bench": cmd_sweep_bench,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our own bars and lines suffice
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
