"""``bench sweep-bench``: trials per minute with 1 and with 2 local workers, side by side.

The same fixed set of tiny trials (a grid of ``l1`` cells at evenly spaced FLOPs targets, one
dense baseline trained beforehand and shared) runs once per worker count, each in its own study
of one sqlite storage. Threads: by default the split ``bench sweep --workers K`` uses (cores // K
torch threads per worker: what a user gets on this machine), or a fixed count per worker
(``threads``), which isolates how the sweep machinery itself scales when a worker's compute does
not already fill the machine (as on a GPU, or with many cores). Only the worker phase is timed:
process start-up, data loading from the decode cache, training, evaluation and the MLflow and
Optuna writes of every trial. The steady rate (from the first trial's start to the last one's
end) leaves out the start-up, which costs about 11 s per sweep here however many trials follow.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from bench import config as configmod
from bench import sweeps
from bench.config import RunConfig
from bench.errors import BenchError

TINY = {
    "data": {"train_limit": 512, "val_size": 256, "test_limit": 512},
    "dense": {"epochs": 1, "batch_size": 64},
    "finetune": {"epochs": 2, "batch_size": 64, "lr": 0.01, "schedule": "constant"},
}


def worker_scaling(
    data_dir: str | None, trials: int = 8, counts: tuple[int, ...] = (1, 2), threads: int = 0, verbose: bool = False
) -> dict[str, Any]:
    """Run ``trials`` identical-cost trials with each worker count; trials/min and the ratio to the first.
    ``threads``: torch threads per worker, 0 for cores // workers; ``verbose``: the workers log
    Optuna's INFO lines too."""
    if not data_dir:
        raise BenchError("sweep-bench needs the datasets: pass --data-dir or set $BENCH_DATA_DIR")
    if trials < 2:
        raise BenchError(f"--trials must be >= 2, got {trials}")
    targets = [round(0.3 + 0.3 * i / (trials - 1), 4) for i in range(trials)]
    cells = [{"model": "resnet20", "dataset": "cifar10", "method": "l1", "target": t, "seed": 0} for t in targets]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-sweep-bench-") as tmp:
        layer = {**TINY, "data": {**TINY["data"], "root": data_dir}, "results_dir": str(Path(tmp) / "results")}
        cfg = configmod.resolve("smoke", None, layer, [])
        rows = [
            _time_workers(cfg, cells, count, threads or sweeps.threads_per_worker(count), Path(tmp), verbose)
            for count in counts
        ]
    for row in rows:
        row["ratio"] = row["trials_per_minute"] / rows[0]["trials_per_minute"]
        row["steady_ratio"] = row["steady_trials_per_minute"] / rows[0]["steady_trials_per_minute"]
    return {"trials": len(cells), "cores": cores, "trial": dataclasses.asdict(cfg.finetune) | {"data": TINY["data"]},
            "rows": rows, "target_ratio_2_over_1": 1.7}  # fmt: skip


def _time_workers(
    cfg: RunConfig, cells: list[dict[str, Any]], count: int, threads: int, tmp: Path, verbose: bool = False
) -> dict[str, Any]:
    """The grid of ``cells`` as its own study, run by ``count`` local workers of ``threads`` threads
    each; only the worker phase is timed (the baseline is warmed beforehand)."""
    spec = sweeps.SweepSpec(
        study=f"workers-{count}",
        storage=sweeps.default_storage(tmp / "results"),
        kind="grid",
        base=cfg.to_dict(),
        trials=len(cells),
        threads=threads,
    )
    spec = sweeps.prepare_sweep(spec, cells, say=lambda _line: None)
    sweeps.warm_baselines(spec, cells, say=lambda _line: None)
    spec_file = sweeps.write_spec(spec)
    logs = tmp / f"logs-{count}"
    logs.mkdir(exist_ok=True)
    launched, start = time.time(), time.perf_counter()
    codes = sweeps.wait_for(sweeps.start_workers(spec_file, count, log_dir=logs, verbose=verbose), say=print)
    seconds = time.perf_counter() - start
    complete = sweeps.open_study(spec).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if any(codes) or len(complete) != len(cells):
        tails = "\n".join(f.read_text()[-1500:] for f in sorted(logs.glob("*.log")))
        raise BenchError(
            f"{count} worker(s): exit codes {codes}, {len(complete)} of {len(cells)} trials complete; "
            f"the workers' output ends:\n{tails}"
        )
    return _row(count, spec.threads, seconds, launched, complete)


def _row(workers: int, threads: int, seconds: float, launched: float, trials: list) -> dict[str, Any]:
    """Wall-clock figures, and the steady state between the first trial's start and the last one's
    end (Optuna's timestamps), which leaves out the workers' start-up (interpreter, imports, data
    cache): a fixed cost per sweep, not per trial, that tiny trials would otherwise be dominated by."""
    first = min(t.datetime_start.timestamp() for t in trials)
    last = max(t.datetime_complete.timestamp() for t in trials)
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "seconds": seconds,
        "startup_seconds": first - launched,
        "trial_phase_seconds": last - first,
        "trials_per_minute": len(trials) / seconds * 60,
        "steady_trials_per_minute": len(trials) / (last - first) * 60,
    }


def format_scaling(report: dict[str, Any]) -> str:
    lines = [
        f"worker scaling: {report['trials']} tiny l1 trials (resnet20, {report['trial']['data']['train_limit']} "
        f"train images, {report['trial']['epochs']} fine-tune epochs), {report['cores']} cores",
        f"  {'workers':>7} {'threads/worker':>15} {'seconds':>8} {'start-up':>9} {'trial phase':>12} "
        f"{'trials/min':>11} {'ratio':>6} {'steady trials/min':>18} {'ratio':>6}",
    ]
    for row in report["rows"]:
        lines.append(
            f"  {row['workers']:>7} {row['threads_per_worker']:>15} {row['seconds']:>8.1f} "
            f"{row['startup_seconds']:>9.1f} {row['trial_phase_seconds']:>12.1f} {row['trials_per_minute']:>11.2f} "
            f"{row['ratio']:>6.3f} {row['steady_trials_per_minute']:>18.2f} {row['steady_ratio']:>6.3f}"
        )
    lines.append(
        f"  target: 2 workers >= {report['target_ratio_2_over_1']}x the steady trials/min of 1 (seconds and "
        "trials/min include each worker's start-up, a fixed cost per sweep)"
    )
    return "\n".join(lines)
