"""``bench speed``: side-by-side measurements in one process, printed as ratios.

(a) Training step: our loop (``training.EpochTrainer``, with its batched augmentation, hooks and
    bookkeeping) against a bare PyTorch loop over pre-built float batches of the same images, same
    model, batch size, precision and memory format. Ratio = our time / bare time (target <= 1.05).
    A bare loop in plain NCHW is shown too: channels_last alone is worth 15-20% on this CPU. And a
    DataLoader loop of the kind Torch-Pruning's CIFAR script runs: a torchvision-style dataset
    (one PIL image and per-image RandomCrop/Flip/ToTensor/Normalize per item), ``num_workers``
    processes, batches copied to the device each step; same model, batch, precision and format
    (GPU target: ours >= 4x its images/s).
(b) Data pipeline: our batched uint8 augmentation against DataLoader pipelines with per-image
    transforms, in images/s (target >= 10x): see ``bench.benchmarks.data_pipeline``.
(c) Inference latency of the dense model and of pruned ones (Li et al.'s named l1 plans for the
    model, and 50% FLOPs plans of l1 and ffr, also with ``prune.round_to=8``) at batch 1 and 64:
    see ``bench.benchmarks.latency``.
(d) FFR overhead: our training step with the ``ffr`` method (default config: feature hooks and the
    flow regularizer's forward and backward) against the same step without a method, from
    identical model copies over the same images, batch size and memory format. Ratio = FFR time /
    plain time (target <= 1.15, on resnet56 by default). FFR runs with its compiled kernel, which
    ``kernel="auto"`` (the default) switches to after ``COMPILE_AFTER_STEPS`` steps, and with the
    eager one it starts on (and stays on where compiling fails), side by side.
Loops alternate over ``repeats`` and the median is reported, so drift hits both sides alike.

The sections run in order and each is a report entry of its own (``SECTIONS``), so the CLI prints
each as it finishes and keeps the finished ones on Ctrl-C; ``bench.benchmarks.speed_text`` holds
the estimate printed first and the text of each section.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import datasets, models, provenance, registry, surgery
from bench.api import Context, Method
from bench.augment import normalize
from bench.benchmarks.data_pipeline import PILArrays, data_pipeline_comparison, reference_transform, sync
from bench.benchmarks.latency import latency_comparison
from bench.config import Schedule
from bench.datasets import DatasetSplits, Split
from bench.errors import BenchError
from bench.flow import kernel_status
from bench.paths import prepare_results_dir
from bench.training import EpochTrainer, Runtime, make_optimizer, resolve_device, seed_everything, train_loader


@dataclass(frozen=True)
class SpeedSettings:
    """What ``bench speed`` measures, and how much: steps and repeats per loop, images for (b),
    timed forwards per latency cell; ``progress`` shows the image-decode bars on first use."""

    model: str = "resnet20"
    device: str = "auto"
    batch_size: int = 128
    steps: int = 10
    repeats: int = 3
    images: int = 4096
    workers: int = 2
    data_dir: str | None = None
    results_dir: str = "results"
    ffr_model: str = "resnet56"
    latency_repeats: int = 30
    progress: bool = True

    def check(self) -> None:
        """User errors, before any work."""
        if min(self.batch_size, self.steps, self.repeats, self.images, self.latency_repeats) < 1 or self.workers < 0:
            raise BenchError(
                "--batch-size, --steps, --repeats, --images and --latency-repeats must be >= 1, --workers >= 0"
            )
        if not self.data_dir:
            raise BenchError("speed needs the CIFAR-10 data: pass --data-dir (the folder holding cifar10-jpeg/)")
        models.validate_name(self.model)
        models.validate_name(self.ffr_model)


@dataclass(frozen=True)
class Section:
    """One section of the report: its letter, its key in the report, and its name."""

    letter: str
    key: str
    title: str


SECTIONS = (
    Section("a", "train_step", "training step"),
    Section("b", "data_pipeline", "data pipeline"),
    Section("c", "latency", "inference latency"),
    Section("d", "ffr_overhead", "FFR overhead"),
)


@dataclass(frozen=True)
class Bench:
    """What every section needs: the settings, the runtime and the decoded data."""

    settings: SpeedSettings
    runtime: Runtime
    data: DatasetSplits


def speed(
    model_name: str,
    device: str,
    batch_size: int,
    steps: int,
    repeats: int,
    images: int,
    workers: int,
    data_dir: str | None,
    results_dir: str,
    ffr_model: str = "resnet56",
    latency_repeats: int = 30,
) -> dict[str, Any]:
    """Run every comparison and return one JSON-able report (nothing printed)."""
    settings = SpeedSettings(model_name, device, batch_size, steps, repeats, images, workers, data_dir, results_dir,
                             ffr_model, latency_repeats, progress=False)  # fmt: skip
    report: dict[str, Any] = {}
    bench = prepare(settings, report)
    for section in SECTIONS:
        report[section.key] = measure_section(bench, section)
    return report


def prepare(settings: SpeedSettings, report: dict[str, Any], on_header: Callable[[], None] = lambda: None) -> Bench:
    """Check the settings, pick the device and load the data (decoded on first use, which can take a
    while: ``on_header`` is called before, once the report's header is in ``report``)."""
    settings.check()
    runtime = Runtime(resolve_device(settings.device), progress=False, epoch_lines=False)
    env = provenance.environment()
    report.update(device=str(runtime.device), torch=torch.__version__, threads=torch.get_num_threads(),
                  cpu_or_gpu=env.get("env.device", "unknown"))  # fmt: skip
    on_header()
    cache = prepare_results_dir(settings.results_dir).data_cache
    data = datasets.build("cifar10", settings.data_dir, cache_dir=cache, val_size=1000, progress=settings.progress)
    report["data_source"] = data.source
    return Bench(settings, runtime, data)


def measure_section(bench: Bench, section: Section) -> dict[str, Any]:
    """Measure one section; its result is the report's entry under ``section.key``."""
    s, data, runtime = bench.settings, bench.data, bench.runtime
    if section.key == "train_step":
        return train_step_comparison(s.model, data, runtime, s.batch_size, s.steps, s.repeats, s.workers)
    if section.key == "data_pipeline":
        return data_pipeline_comparison(
            data, Path(s.data_dir or ""), runtime, s.batch_size, s.images, s.workers, s.repeats
        )
    if section.key == "latency":
        return latency_comparison(s.model, data.num_classes, data.input_size, runtime.device, repeats=s.latency_repeats)
    return ffr_overhead_comparison(s.ffr_model, data, runtime, s.batch_size, s.steps, s.repeats)


# --- (a) training step --------------------------------------------------------------------------


def train_step_comparison(
    model_name: str, data: DatasetSplits, runtime: Runtime, batch_size: int, steps: int, repeats: int, workers: int = 2
) -> dict[str, Any]:
    seed_everything(0)
    count = steps * batch_size
    split = Split(data.train.images[:count], data.train.labels[:count])
    subset = DatasetSplits(**{**data.__dict__, "train": split})
    base = models.create(model_name, data.num_classes, data.input_size)
    schedule = Schedule(epochs=1, batch_size=batch_size, lr=0.01, schedule="constant")
    loops = dict(zip(("ours", "bare", "bare_nchw"), _loop_pair(base, subset, schedule, runtime), strict=True))
    loops["dataloader"] = _dataloader_loop(base, subset, schedule, runtime, workers)
    for loop in loops.values():
        loop()  # warm-up: allocator, kernels, first touch of the weights
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):  # alternate, so drift hits every loop alike
        for name, loop in loops.items():
            times[name].append(loop())
    ms = {name: statistics.median(t) / steps * 1e3 for name, t in times.items()}
    return {
        "model": model_name,
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "memory_format": "channels_last" if runtime.channels_last else "contiguous",
        "ours_ms_per_step": ms["ours"],
        "bare_ms_per_step": ms["bare"],
        "bare_nchw_ms_per_step": ms["bare_nchw"],
        "dataloader_ms_per_step": ms["dataloader"],
        "dataloader_workers": workers,
        "images_per_s": {name: batch_size / t * 1e3 for name, t in ms.items()},
        "ratio_ours_over_bare": ms["ours"] / ms["bare"],
        "ratio_ours_over_bare_nchw": ms["ours"] / ms["bare_nchw"],
        "speedup_ours_over_dataloader": ms["dataloader"] / ms["ours"],
        "target_max_ratio": 1.05,
        "target_min_speedup_over_dataloader_gpu": 4.0,
    }


def _loop_pair(base: nn.Module, data: DatasetSplits, schedule: Schedule, runtime: Runtime):
    """Closures that each time one pass over the same images, from identical model copies:
    our loop, a bare loop in the same memory format (the overhead comparison), and a bare loop in
    plain NCHW (what a hand-written loop usually does)."""
    ours_model = copy.deepcopy(base).to(runtime.device, memory_format=runtime.memory_format)
    opt = make_optimizer(ours_model, schedule)
    loader = train_loader(data, schedule, runtime, seed=0)
    trainer = EpochTrainer(ours_model, loader, opt, schedule, runtime, desc="speed")
    return (
        _timed_epochs(trainer, runtime),
        _bare_loop(base, data, schedule, runtime, runtime.memory_format),
        _bare_loop(base, data, schedule, runtime, torch.contiguous_format),
    )


def _bare_loop(base: nn.Module, data: DatasetSplits, schedule: Schedule, runtime: Runtime, fmt: torch.memory_format):
    """forward, loss, zero_grad, backward, step over pre-normalised float batches; nothing else."""
    model = copy.deepcopy(base).to(runtime.device, memory_format=fmt)
    opt = make_optimizer(model, schedule)
    x_all = normalize(data.train.images.to(runtime.device), data.mean, data.std).contiguous(memory_format=fmt)
    labels = data.train.labels.to(runtime.device)
    batches = list(zip(x_all.split(schedule.batch_size), labels.split(schedule.batch_size), strict=True))
    return _plain_passes(model, opt, batches, runtime, lambda x, y: (x, y))


def _plain_passes(model: nn.Module, opt, batches, runtime: Runtime, to_device):
    """A closure that times one pass of forward, loss, zero_grad, backward, step over ``batches``,
    each batch first through ``to_device(x, y)``; nothing else."""

    def one_pass() -> float:
        model.train()
        start = time.perf_counter()
        for x, y in batches:
            plain_step(model, opt, *to_device(x, y), runtime)
        sync(runtime)
        return time.perf_counter() - start

    return one_pass


def plain_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, runtime: Runtime):
    """forward, loss, zero_grad, backward, step: the bare loop's unit of work (no host sync)."""
    with runtime.autocast:
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _dataloader_loop(base: nn.Module, data: DatasetSplits, schedule: Schedule, runtime: Runtime, workers: int):
    """Torch-Pruning's CIFAR-script shape: DataLoader over a per-image-transform dataset, each
    batch copied to the device, then the same step as the bare loop. Its workers start once and
    persist, as they would across the epochs of a real run."""
    from torch.utils.data import DataLoader

    model = copy.deepcopy(base).to(runtime.device, memory_format=runtime.memory_format)
    opt = make_optimizer(model, schedule)
    cuda = runtime.device.type == "cuda"
    loader = DataLoader(
        PILArrays(data.train, reference_transform(data)), schedule.batch_size, shuffle=True,
        num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0, drop_last=False,
    )  # fmt: skip

    def to_device(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(runtime.device, non_blocking=cuda).contiguous(memory_format=runtime.memory_format)
        return x, y.to(runtime.device, non_blocking=cuda)

    return _plain_passes(model, opt, loader, runtime, to_device)


def _timed_epochs(trainer: EpochTrainer, runtime: Runtime):
    """A closure that times one pass of ``trainer`` over its (fixed, epoch-0) batches."""

    def loop() -> float:
        start = time.perf_counter()
        trainer.run(0)
        sync(runtime)
        return time.perf_counter() - start

    return loop


# --- (d) FFR overhead ----------------------------------------------------------------------------


def ffr_overhead_comparison(
    model_name: str, data: DatasetSplits, runtime: Runtime, batch_size: int, steps: int, repeats: int
) -> dict[str, Any]:
    """Our training step with the ``ffr`` method against the same step with no method."""
    seed_everything(0)
    count = steps * batch_size
    subset = DatasetSplits(**{**data.__dict__, "train": Split(data.train.images[:count], data.train.labels[:count])})
    base = models.create(model_name, data.num_classes, data.input_size)
    schedule = Schedule(epochs=1, batch_size=batch_size, lr=0.01, schedule="constant")
    methods = {"ffr": registry.create_method("ffr", {"kernel": "compiled"}),
               "ffr_eager": registry.create_method("ffr", {"kernel": "eager"})}  # fmt: skip
    trainers = {name: _trainer(base, model_name, subset, schedule, runtime, m) for name, m in methods.items()}
    trainers["plain"] = _trainer(base, model_name, subset, schedule, runtime, None)
    loops = {name: _timed_epochs(trainer, runtime) for name, trainer in trainers.items()}
    try:
        for loop in loops.values():
            loop()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(repeats):  # alternate, so drift hits both alike
            for name, loop in loops.items():
                times[name].append(loop())
    finally:
        for trainer in trainers.values():
            trainer.close()
    ms = {name: statistics.median(t) / len(trainers["plain"].loader) * 1e3 for name, t in times.items()}
    kernel = kernel_status(methods["ffr"])
    return {
        "model": model_name,
        "batch_size": batch_size,
        "steps": len(trainers["plain"].loader),
        "repeats": repeats,
        "memory_format": "channels_last" if runtime.channels_last else "contiguous",
        "ffr_params": {**methods["ffr"].config_dict(), "kernel": "auto"},
        "ffr_kernel": kernel.kernel,
        "ffr_compile_after_steps": kernel.compile_after,
        "ffr_ms_per_step": ms["ffr"],
        "ffr_eager_ms_per_step": ms["ffr_eager"],
        "plain_ms_per_step": ms["plain"],
        "ratio_ffr_over_plain": ms["ffr"] / ms["plain"],
        "ratio_ffr_eager_over_plain": ms["ffr_eager"] / ms["plain"],
        "target_max_ratio": 1.15,
    }


def _trainer(
    base: nn.Module, model_name: str, data: DatasetSplits, schedule: Schedule, runtime: Runtime, method: Method | None
) -> EpochTrainer:
    model = copy.deepcopy(base).to(runtime.device, memory_format=runtime.memory_format)
    ctx = None
    if method is not None:
        generator = torch.Generator().manual_seed(0)
        ctx = Context(model_name, surgery.prunable_units(model), runtime.device, 0, generator, data, data.input_size)
        method.setup(model, ctx)
    loader = train_loader(data, schedule, runtime, seed=0)
    return EpochTrainer(model, loader, make_optimizer(model, schedule), schedule, runtime, method, ctx, desc="speed")
