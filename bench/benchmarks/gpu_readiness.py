"""GPU readiness: the harness's GPU figures from one H100/H200 in at most 8 minutes, as one JSON document.

Run it as ``scripts/gpu_check.sh`` (or ``python -m bench.benchmarks.gpu_readiness``). Three steps,
each a subprocess with its own timeout, so that one that hangs cannot spend the others' time:

1. ``tests``: the ``gpu``-marked tests (``pytest -m gpu``): pass, fail, error and skip counts.
2. ``speed``: ``bench speed --device cuda --model resnet56 --json``: every ratio, images/s and
   latency of sections (a)-(d).
3. ``epoch``: one timed training epoch of resnet56 over the full CIFAR-10 training split (45,000
   images after the 5,000 validation images; batch 128, bf16 autocast, channels_last, data and
   augmentation on the device: the harness's GPU path), then one evaluation of val and test.

Before any step it fails fast, exit 2 with one line, when there is no CUDA device or no CIFAR-10
under ``--data-dir`` / ``$BENCH_DATA_DIR``. ``--check`` validates the set-up and prints the plan
(commands, timeouts) without a GPU; ``--device cpu --quick`` runs every step on the CPU at toy sizes,
which is how the script is tested on machines without a GPU. The exit code is 0 when every step
finished and no test failed, 1 otherwise; the JSON says which.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests/ and the bench package
BUDGET_S = 480  # 8 minutes for everything; the steps' timeouts add up to less, start-up included
TIMEOUTS_S = {"tests": 150, "speed": 210, "epoch": 100}
QUICK_SPEED = ["--model", "resnet20", "--ffr-model", "resnet20", "--batch-size", "32", "--steps", "1",
               "--repeats", "1", "--images", "64", "--workers", "0", "--latency-repeats", "1"]  # fmt: skip
QUICK_EPOCH = {"model": "resnet20", "train_limit": 512, "val_size": 256, "test_limit": 256}
FULL_EPOCH = {"model": "resnet56", "train_limit": None, "val_size": None, "test_limit": None}  # 45k/5k/10k


@dataclass(frozen=True)
class Plan:
    """What the check will run: the device, the data, where caches go, toy or full sizes."""

    device: str
    data_dir: Path
    results_dir: Path
    quick: bool

    def commands(self, scratch: Path) -> dict[str, list[str]]:
        """Each step's command line (``scratch``: where the test report is written)."""
        common = ["--data-dir", str(self.data_dir), "--results-dir", str(self.results_dir)]
        speed = ["--model", "resnet56"] if not self.quick else QUICK_SPEED
        return {
            "tests": [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                      f"--junitxml={scratch / 'gpu-tests.xml'}", str(ROOT / "tests")],
            "speed": [sys.executable, "-m", "bench", "speed", "--device", self.device, "--json", "--no-progress",
                      *speed, *common],
            "epoch": [sys.executable, "-m", __spec__.name if __spec__ else "bench.benchmarks.gpu_readiness",
                      "--step", "epoch", "--device", self.device, *common, *(["--quick"] if self.quick else [])],
        }  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/gpu_check.sh",
        description="GPU readiness: gpu tests, bench speed and one full-split resnet56 epoch, as one JSON "
        f"document, in at most {BUDGET_S // 60} minutes on one H100/H200.",
    )
    p.add_argument("--data-dir", help="root holding cifar10-jpeg/ or cifar-10-batches-py/ (default $BENCH_DATA_DIR)")
    p.add_argument("--results-dir", default="results", help="for the decoded-image cache (default results/)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu needs --quick (default cuda)")
    p.add_argument("--quick", action="store_true", help="toy sizes: exercises the script, measures nothing useful")
    p.add_argument("--check", action="store_true", help="validate the set-up and print the plan; runs nothing")
    p.add_argument("--out", help="also write the JSON document to this file")
    p.add_argument("--step", choices=["epoch"], help=argparse.SUPPRESS)  # internal: one step, in its subprocess
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        plan = make_plan(args)
        if args.step == "epoch":
            print(json.dumps(epoch(plan)))
            return 0
        result = describe(plan) if args.check else run_all(plan)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if result["ok"] else 1


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan, after every check that needs no work: the data, pytest, and the device."""
    raw = args.data_dir or os.environ.get("BENCH_DATA_DIR")
    if not raw:
        raise BenchError("no data: pass --data-dir or set $BENCH_DATA_DIR to the folder holding cifar10-jpeg/")
    data_dir = Path(raw).expanduser().resolve()
    if not any((data_dir / d).is_dir() for d in ("cifar10-jpeg/train", "cifar-10-batches-py")):
        raise BenchError(f"no CIFAR-10 under {data_dir}: expected cifar10-jpeg/train/ or cifar-10-batches-py/")
    if args.device == "cpu" and not args.quick:
        raise BenchError("--device cpu takes --quick: the full figures are GPU figures (hours on a CPU)")
    if not args.step and (not (ROOT / "tests").is_dir() or importlib.util.find_spec("pytest") is None):
        raise BenchError(f"the gpu tests need {ROOT / 'tests'} and pytest (run from a checkout, after uv sync)")
    if args.device == "cuda" and not args.check:
        _require_cuda()
    return Plan(args.device, data_dir, Path(args.results_dir).resolve(), args.quick)


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise BenchError(
            f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}): this check needs "
            "one GPU. --check validates the set-up without one; --device cpu --quick runs the steps on the CPU"
        )


def describe(plan: Plan) -> dict[str, Any]:
    """``--check``: the set-up is valid; what would run, and for how long at most."""
    import torch

    commands = plan.commands(Path(tempfile.gettempdir()))
    return {"ok": True, "check": True, "device": plan.device, "cuda_available": torch.cuda.is_available(),
            "torch": torch.__version__, "data_dir": str(plan.data_dir), "quick": plan.quick,
            "budget_s": BUDGET_S, "timeouts_s": TIMEOUTS_S,
            "commands": {k: " ".join(v) for k, v in commands.items()}}  # fmt: skip


# --- running the steps ----------------------------------------------------------------------------


def run_all(plan: Plan) -> dict[str, Any]:
    """Every step in turn, each within its timeout and what is left of the budget; one document."""
    start = time.perf_counter()
    result: dict[str, Any] = {"ok": True, "device": plan.device, "quick": plan.quick, **_versions(plan.device)}
    result["steps"] = {}
    env = {**os.environ, "BENCH_DATA_DIR": str(plan.data_dir), "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-check-") as scratch:
        for name, cmd in plan.commands(Path(scratch)).items():
            left = BUDGET_S - (time.perf_counter() - start)
            result["steps"][name], out = run_step(cmd, min(TIMEOUTS_S[name], max(1, int(left))), env)
            result[name] = _figures(name, out, Path(scratch))
    steps_ok = all(step["status"] == "ok" for step in result["steps"].values())
    tests = result["tests"]
    result["ok"] = steps_ok and bool(tests) and tests["failed"] == 0 and tests["errors"] == 0
    result["seconds_total"] = time.perf_counter() - start
    return result


def _versions(device: str) -> dict[str, Any]:
    import platform

    import torch

    cuda = device == "cuda" and torch.cuda.is_available()
    return {
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "host": platform.node(),
    }


def run_step(cmd: list[str], timeout_s: int, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Run one step in its own process group (a timeout ends its children too): its status, time
    and, when it did not succeed, the tail of its stderr; and its stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout_s)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = f"timed out after {timeout_s} s"
    info = {"status": status, "seconds": time.perf_counter() - start, "timeout_s": timeout_s}
    return (info if status == "ok" else {**info, "output_tail": (out[-1000:] + err[-2000:]).strip()}), out


def _figures(name: str, stdout: str, scratch: Path) -> dict[str, Any]:
    """A step's figures: test counts from the JUnit report, or the JSON a step printed."""
    if name == "tests":
        return junit_counts(scratch / "gpu-tests.xml")
    try:
        figures = json.loads(stdout)
    except json.JSONDecodeError:
        return {}
    return speed_figures(figures) if name == "speed" else figures


def junit_counts(junit: Path) -> dict[str, int]:
    """Passed, failed, errors and skipped of a pytest JUnit XML report ({} when there is none)."""
    if not junit.is_file():
        return {}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"passed": passed, "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"]}


def speed_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The speed report without the per-unit channel lists of the latency variants (plan detail,
    not a speed figure), plus the headline ratios first."""
    figures = dict(report)
    if "latency" in figures:
        rows = [{k: v for k, v in row.items() if k != "channels"} for row in figures["latency"]["rows"]]
        figures["latency"] = {**figures["latency"], "rows": rows}
    t, d, f = (report.get(k, {}) for k in ("train_step", "data_pipeline", "ffr_overhead"))
    headline = {"ours_over_bare": t.get("ratio_ours_over_bare"),
                "ours_over_dataloader_speedup": t.get("speedup_ours_over_dataloader"),
                "ours_train_images_per_s": t.get("images_per_s", {}).get("ours"),
                "data_pipeline_over_imagefolder": d.get("ratio_ours_over_imagefolder"),
                "ffr_over_plain": f.get("ratio_ffr_over_plain")}  # fmt: skip
    return {"headline": headline, **figures}


# --- the epoch step (runs in its own process) ------------------------------------------------------


def epoch(plan: Plan) -> dict[str, Any]:
    """One timed training epoch over the full training split (toy sizes with ``quick``), then one
    timed evaluation of val and test. The clock stops after the device has finished."""
    from bench import training

    sizes = QUICK_EPOCH if plan.quick else FULL_EPOCH
    start = time.perf_counter()
    data = _data(plan, sizes)
    loaded = time.perf_counter() - start
    runtime = training.Runtime(training.resolve_device(plan.device), progress=False, epoch_lines=False)
    trainer = _trainer(sizes["model"], data, runtime)
    train_s, stats = _timed(lambda: trainer.run(0), runtime)
    val, test = training.eval_loader(data.val, data, runtime), training.eval_loader(data.test, data, runtime)
    eval_s, accs = _timed(lambda: training.evaluate_splits(trainer.model, val, test, runtime), runtime)
    return {"model": sizes["model"], "train_images": len(data.train), "val_images": len(data.val),
            "test_images": len(data.test), "batch_size": trainer.schedule.batch_size, "amp_bf16": runtime.amp,
            "channels_last": runtime.channels_last, "data_source": data.source, "data_load_seconds": loaded,
            "epoch_seconds": train_s, "images_per_s": len(data.train) / train_s, "eval_seconds": eval_s,
            "train_loss": stats["train_loss"], **accs}  # fmt: skip


def _data(plan: Plan, sizes: dict[str, Any]) -> Any:
    """CIFAR-10 with the default 5,000 validation images; the rest of train (45,000) unless toy sizes."""
    from bench import datasets
    from bench.paths import prepare_results_dir

    cache = prepare_results_dir(str(plan.results_dir)).data_cache
    return datasets.build("cifar10", plan.data_dir, cache_dir=cache, train_limit=sizes["train_limit"],
                          val_size=sizes["val_size"], test_limit=sizes["test_limit"], progress=False)  # fmt: skip


def _trainer(model_name: str, data: Any, runtime: Any) -> Any:
    """The harness's training loop for one epoch of ``model_name`` (the quick preset's dense recipe)."""
    from bench import models, training
    from bench.config import Schedule

    training.seed_everything(0)
    model = models.create(model_name, data.num_classes, data.input_size)
    model.to(runtime.device, memory_format=runtime.memory_format)
    schedule = Schedule(epochs=1, batch_size=128, lr=0.1, weight_decay=5e-4, schedule="cosine")
    loader = training.train_loader(data, schedule, runtime, seed=0)
    return training.EpochTrainer(model, loader, training.make_optimizer(model, schedule), schedule, runtime)


def _timed(work: Any, runtime: Any) -> tuple[float, Any]:
    """Seconds of ``work()`` up to the end of its device work, and its result."""
    import torch

    start = time.perf_counter()
    out = work()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


if __name__ == "__main__":
    sys.exit(main())
