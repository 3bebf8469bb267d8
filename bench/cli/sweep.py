"""``bench sweep``: an Optuna search over a method's hyperparameters, or a grid, run by local (or
distributed) worker processes; ``--best K`` re-runs the best trials over seeds. The sweep itself
is :mod:`bench.sweeps`; this module turns flags into a ``SweepSpec`` and prints the outcome."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cli.common import add_command, add_settings, int_list, parse_float, run_flags, split
from bench.errors import BenchError

if TYPE_CHECKING:  # the sweep machinery imports optuna: only handlers import it, after the flags are checked
    from bench.config import RunConfig
    from bench.sweeps import SweepSpec

NAME = "sweep"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "Optuna search over a method's hyperparameters, or a grid; local or distributed workers",
        "examples:\n"
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
    add_settings(p, seeds="the sweep's seed (the first given), or the seeds of --best (default 0)")
    p.add_argument("--no-progress", action="store_true", help="accepted for symmetry: trials print epoch lines only")
    p.add_argument("--verbose", action="store_true", help="Optuna's own INFO log lines too (default: warnings only)")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between a trial's heartbeats (default 10)")
    p.add_argument("--grace", type=int, default=60, help="seconds without one before a trial is retried (default 60)")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run as a worker from this spec file
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)


def handle(args: argparse.Namespace) -> int:
    from bench import sweeps
    from bench.sweeps.output import optuna_logging

    optuna_logging(args.verbose)
    if args.worker:
        spec = sweeps.SweepSpec.from_json(Path(args.worker).read_text())
        sweeps.work(spec, args.worker_index, verbose=args.verbose)
        return 0
    if args.workers < 1:
        raise BenchError(f"--workers must be >= 1, got {args.workers}")
    spec, cells = _grid_spec(args) if args.grid else (_search_spec(args), None)
    if args.best:
        _print_best(spec, args.best, tuple(int_list(args.seeds or "0", "--seeds")))
        return 0
    summary = sweeps.run_sweep(spec, args.workers, cells, verbose=args.verbose)
    return 0 if summary.complete + summary.pruned > 0 or summary.failed == 0 else 1


def _grid_spec(args: argparse.Namespace) -> tuple[SweepSpec, list[dict[str, Any]]]:
    """The spec of ``--grid FILE`` and its cells; the grid's own preset, sets and study name win."""
    from bench import sweeps

    grid = sweeps.load_grid(args.grid)
    cfg = _sweep_config(args, grid.preset or args.preset, [*grid.sets, *args.set], model=grid.models[0])
    study = args.study or grid.study or Path(args.grid).stem
    cells = grid.cells()
    return _sweep_spec(args, cfg, study, kind="grid", trials=len(cells)), cells


def _search_spec(args: argparse.Namespace) -> SweepSpec:
    """The spec of ``--method M --model X``: an Optuna search over M's space."""
    from bench import registry, sweeps

    if not args.method or not args.model:
        raise BenchError("sweep needs --method and --model (or --grid FILE); see 'python -m bench sweep --help'")
    registry.get_method(args.method)
    cfg = _sweep_config(args, args.preset, args.set, model=args.model)
    objectives = tuple(split(args.objectives))
    study = args.study or sweeps.default_study_name(args.method, args.model, cfg.data.name, args.preset, objectives)
    return _sweep_spec(args, cfg, study, kind="search", method=args.method, trials=args.trials, objectives=objectives)


def _sweep_config(args: argparse.Namespace, preset: str, sets: list[str], *, model: str) -> RunConfig:
    """The base RunConfig of every trial; a sweep runs one seed, the first of ``--seeds``."""
    from bench import config

    flags = {**run_flags(args), "model": model}
    if "seeds" in flags:
        flags["seeds"] = flags["seeds"][:1]
    return config.resolve(preset, args.config, flags, sets)


def _sweep_spec(args: argparse.Namespace, cfg: RunConfig, study: str, **kind: Any) -> SweepSpec:
    """Flags and the base config as a ``SweepSpec``; ``kind``: the fields that differ between a grid
    and a search (kind, trials, method, objectives). A local worker gets cores // workers threads."""
    from bench import sweeps

    results = Path(cfg.results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    return sweeps.SweepSpec(
        study=study,
        storage=args.storage or sweeps.default_storage(results),
        base=cfg.to_dict(),
        **kind,
        pruner=args.pruner,
        target_range=_target_range(args.target_range),
        sampler_seed=args.sampler_seed,
        heartbeat_s=args.heartbeat,
        grace_s=args.grace,
        threads=sweeps.threads_per_worker(args.workers),
    )


def _target_range(text: str) -> tuple[float, float]:
    """``--target-range LO,HI``; without a comma (0, 0), which the spec rejects."""
    if "," not in text:
        return (0, 0)
    lo, hi = (parse_float(x, "--target-range") for x in split(text))
    return (lo, hi)


def _print_best(spec: SweepSpec, k: int, seeds: tuple[int, ...]) -> None:
    """Re-run the best ``k`` trials over ``seeds`` and print their comparison table."""
    from bench import sweeps
    from reports.tables import comparison_table, format_table

    best = sweeps.rerun_best(spec, k, seeds)
    print(format_table(comparison_table(best.results), title=best.title))
