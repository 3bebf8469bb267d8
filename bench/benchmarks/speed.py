"""``bench speed``: side-by-side measurements in one process, printed as ratios.

(a) Training step: our loop (``training.EpochTrainer``, with its batched augmentation, hooks and
    bookkeeping) against a bare PyTorch loop over pre-built float batches of the same images, same
    model, batch size, precision and memory format. Ratio = our time / bare time (target <= 1.05).
    A bare loop in plain NCHW is shown too: channels_last alone is worth 15-20% on this CPU. And a
    DataLoader loop of the kind Torch-Pruning's CIFAR script runs: a torchvision-style dataset
    (one PIL image and per-image RandomCrop/Flip/ToTensor/Normalize per item), ``num_workers``
    processes, batches copied to the device each step; same model, batch, precision and format
    (GPU target: ours >= 4x its images/s).
(c) Inference latency of the dense model and of pruned ones (Li et al.'s named l1 plans for the
    model, and 50% FLOPs plans of l1 and ffr, also with ``prune.round_to=8``) at batch 1 and 64:
    see ``bench.benchmarks.latency``.
(b) Data pipeline: our batched uint8 augmentation (``BatchLoader``) against torchvision
    ``ImageFolder`` + ``DataLoader`` with the standard per-image transforms (RandomCrop(32, 4),
    RandomHorizontalFlip, ToTensor, Normalize), in images/s (target >= 10x). A torchvision
    CIFAR10-style variant (PIL transforms from in-memory arrays, no JPEG decode) is shown too.
(d) FFR overhead: our training step with the ``ffr`` method (default config: feature hooks and the
    flow regularizer's forward and backward) against the same step without a method, from
    identical model copies over the same images, batch size and memory format. Ratio = FFR time /
    plain time (target <= 1.15, on resnet56 by default). FFR runs with its compiled kernel, which
    ``kernel="auto"`` (the default) switches to after ``COMPILE_AFTER_STEPS`` steps, and with the
    eager one it starts on (and stays on where compiling fails), side by side.
Loops alternate over ``repeats`` and the median is reported, so drift hits both sides alike.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import datasets, models, provenance, registry, surgery
from bench.api import Context, Method
from bench.augment import normalize
from bench.benchmarks.latency import format_latency, latency_comparison
from bench.config import Schedule
from bench.datasets import DatasetSplits, Split
from bench.errors import BenchError
from bench.flow import kernel_status
from bench.paths import prepare_results_dir
from bench.training import EpochTrainer, Runtime, make_optimizer, resolve_device, seed_everything, train_loader


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
    """Run every comparison and return one JSON-able report."""
    if min(batch_size, steps, repeats, images) < 1 or workers < 0:
        raise BenchError("--batch-size, --steps, --repeats and --images must be >= 1, --workers >= 0")
    if not data_dir:
        raise BenchError("speed needs the CIFAR-10 data: pass --data-dir (the folder holding cifar10-jpeg/)")
    runtime = Runtime(resolve_device(device), progress=False, epoch_lines=False)
    data = datasets.build("cifar10", data_dir, cache_dir=prepare_results_dir(results_dir).data_cache, val_size=1000)
    env = provenance.environment()
    return {
        "device": str(runtime.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_or_gpu": env.get("env.device", "unknown"),
        "data_source": data.source,
        "train_step": train_step_comparison(model_name, data, runtime, batch_size, steps, repeats, workers),
        "data_pipeline": data_pipeline_comparison(data, Path(data_dir), runtime, batch_size, images, workers, repeats),
        "latency": latency_comparison(
            model_name, data.num_classes, data.input_size, runtime.device, repeats=latency_repeats
        ),
        "ffr_overhead": ffr_overhead_comparison(ffr_model, data, runtime, batch_size, steps, repeats),
    }


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
            x, y = to_device(x, y)
            with runtime.autocast:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(runtime)
        return time.perf_counter() - start

    return one_pass


def _dataloader_loop(base: nn.Module, data: DatasetSplits, schedule: Schedule, runtime: Runtime, workers: int):
    """Torch-Pruning's CIFAR-script shape: DataLoader over a per-image-transform dataset, each
    batch copied to the device, then the same step as the bare loop. Its workers start once and
    persist, as they would across the epochs of a real run."""
    from torch.utils.data import DataLoader

    model = copy.deepcopy(base).to(runtime.device, memory_format=runtime.memory_format)
    opt = make_optimizer(model, schedule)
    cuda = runtime.device.type == "cuda"
    loader = DataLoader(
        _PILArrays(data.train, _reference_transform(data)), schedule.batch_size, shuffle=True,
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
        _sync(runtime)
        return time.perf_counter() - start

    return loop


def _sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()


# --- (b) data pipeline --------------------------------------------------------------------------


def data_pipeline_comparison(
    data: DatasetSplits, data_dir: Path, runtime: Runtime, batch_size: int, images: int, workers: int, repeats: int
) -> dict[str, Any]:
    images = min(images, len(data.train))
    split = Split(data.train.images[:images], data.train.labels[:images])
    ours = [_time_ours(split, data, runtime, batch_size) for _ in range(repeats)]
    folder = [_time_imagefolder(data_dir, data, batch_size, images, workers) for _ in range(repeats)]
    arrays = [_time_pil_arrays(split, data, batch_size, workers) for _ in range(repeats)]
    ours_ips, folder_ips, arrays_ips = (images / statistics.median(t) for t in (ours, folder, arrays))
    return {
        "images": images,
        "batch_size": batch_size,
        "workers": workers,
        "ours_images_per_s": ours_ips,
        "imagefolder_dataloader_images_per_s": folder_ips,
        "pil_arrays_dataloader_images_per_s": arrays_ips,
        "ratio_ours_over_imagefolder": ours_ips / folder_ips,
        "ratio_ours_over_pil_arrays": ours_ips / arrays_ips,
        "target_min_ratio": 10.0,
    }


def _time_ours(split: Split, data: DatasetSplits, runtime: Runtime, batch_size: int) -> float:
    subset = DatasetSplits(**{**data.__dict__, "train": split})
    loader = train_loader(subset, Schedule(batch_size=batch_size), runtime, seed=0)
    start = time.perf_counter()
    for x, _ in loader:
        x.sum()  # consume the batch, as a training step would
    _sync(runtime)
    return time.perf_counter() - start


def _reference_transform(data: DatasetSplits):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomCrop(data.input_size, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(data.mean, data.std),
        ]
    )


def _time_imagefolder(data_dir: Path, data: DatasetSplits, batch_size: int, images: int, workers: int) -> float:
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    root = data_dir / "cifar10-jpeg" / "train"
    if not root.is_dir():
        raise BenchError(f"the ImageFolder reference needs {root}")
    dataset = Subset(ImageFolder(str(root), transform=_reference_transform(data)), range(images))
    return _time_dataloader(DataLoader(dataset, batch_size, shuffle=True, num_workers=workers))


class _PILArrays(torch.utils.data.Dataset):
    """torchvision CIFAR10-style: uint8 arrays in memory, one PIL image and transform per item."""

    def __init__(self, split: Split, transform) -> None:
        self.images = split.images.permute(0, 2, 3, 1).numpy()
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _time_pil_arrays(split: Split, data: DatasetSplits, batch_size: int, workers: int) -> float:
    from torch.utils.data import DataLoader

    return _time_dataloader(
        DataLoader(_PILArrays(split, _reference_transform(data)), batch_size, shuffle=True, num_workers=workers)
    )


def _time_dataloader(loader) -> float:
    start = time.perf_counter()
    for x, _ in loader:
        x.sum()
    return time.perf_counter() - start


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


def format_speed(report: dict[str, Any]) -> str:
    t, d, f = report["train_step"], report["data_pipeline"], report["ffr_overhead"]
    params = ", ".join(f"{k}={v}" for k, v in f["ffr_params"].items())
    return "\n".join(
        [
            f"bench speed on {report['device']} ({report['cpu_or_gpu']}, {report['threads']} threads, "
            f"torch {report['torch']})",
            f"(a) training step, {t['model']}, batch {t['batch_size']}, median of {t['repeats']} alternating passes of "
            f"{t['steps']} steps:",
            f"    ours {t['ours_ms_per_step']:.1f} ms/step   bare PyTorch, same {t['memory_format']} format "
            f"{t['bare_ms_per_step']:.1f} ms/step   ratio ours/bare {t['ratio_ours_over_bare']:.3f} "
            f"(target <= {t['target_max_ratio']})",
            f"    bare PyTorch in plain NCHW {t['bare_nchw_ms_per_step']:.1f} ms/step   "
            f"ratio ours/bare-NCHW {t['ratio_ours_over_bare_nchw']:.3f}",
            f"    DataLoader loop (Torch-Pruning style, {t['dataloader_workers']} workers) "
            f"{t['dataloader_ms_per_step']:.1f} ms/step   images/s: ours {t['images_per_s']['ours']:,.0f}, "
            f"DataLoader {t['images_per_s']['dataloader']:,.0f}, speed-up {t['speedup_ours_over_dataloader']:.2f}x "
            f"(GPU target >= {t['target_min_speedup_over_dataloader_gpu']:.0f}x)",
            f"(b) data pipeline, {d['images']} images, batch {d['batch_size']}, DataLoader workers {d['workers']}:",
            f"    ours (batched uint8) {d['ours_images_per_s']:,.0f} img/s",
            f"    ImageFolder+DataLoader {d['imagefolder_dataloader_images_per_s']:,.0f} img/s   "
            f"ratio {d['ratio_ours_over_imagefolder']:.1f}x (target >= {d['target_min_ratio']:.0f}x)",
            f"    PIL-from-arrays+DataLoader (torchvision CIFAR10 style) "
            f"{d['pil_arrays_dataloader_images_per_s']:,.0f} img/s   ratio {d['ratio_ours_over_pil_arrays']:.1f}x",
            format_latency(report["latency"]),
            f"(d) FFR overhead, {f['model']}, batch {f['batch_size']}, median of {f['repeats']} alternating passes of "
            f"{f['steps']} steps, {f['memory_format']}, ffr defaults ({params}):",
            f"    with FFR ({f['ffr_kernel']} kernel) {f['ffr_ms_per_step']:.1f} ms/step   plain "
            f"{f['plain_ms_per_step']:.1f} ms/step   ratio ffr/plain {f['ratio_ffr_over_plain']:.3f} "
            f"(target <= {f['target_max_ratio']})",
            f"    with FFR (eager kernel, its first {f['ffr_compile_after_steps']} steps) "
            f"{f['ffr_eager_ms_per_step']:.1f} ms/step   ratio {f['ratio_ffr_eager_over_plain']:.3f}",
        ]
    )
