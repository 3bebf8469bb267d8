"""``bench speed``: side-by-side measurements in one process, printed as ratios.

(a) Training step: our loop (``training.fit``'s epoch function, with its batched augmentation,
    hooks and bookkeeping) against a bare PyTorch loop over pre-built float batches of the same
    images, same model, batch size and precision. Ratio = our time / bare time (target <= 1.05).
(b) Data pipeline: our batched uint8 augmentation (``BatchLoader``) against torchvision
    ``ImageFolder`` + ``DataLoader`` with the standard per-image transforms (RandomCrop(32, 4),
    RandomHorizontalFlip, ToTensor, Normalize), in images/s (target >= 10x). A torchvision
    CIFAR10-style variant (PIL transforms from in-memory arrays, no JPEG decode) is shown too.
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

from bench import datasets, models, provenance
from bench.augment import BatchLoader, normalize
from bench.config import Schedule
from bench.datasets import DatasetSplits, Split
from bench.errors import BenchError
from bench.paths import prepare_results_dir
from bench.training import EpochTrainer, Runtime, make_optimizer, resolve_device, seed_everything


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
) -> dict[str, Any]:
    """Run both comparisons and return one JSON-able report."""
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
        "train_step": train_step_comparison(model_name, data, runtime, batch_size, steps, repeats),
        "data_pipeline": data_pipeline_comparison(data, Path(data_dir), runtime, batch_size, images, workers, repeats),
    }


# --- (a) training step --------------------------------------------------------------------------


def train_step_comparison(
    model_name: str, data: DatasetSplits, runtime: Runtime, batch_size: int, steps: int, repeats: int
) -> dict[str, Any]:
    seed_everything(0)
    count = steps * batch_size
    split = Split(data.train.images[:count], data.train.labels[:count])
    subset = DatasetSplits(**{**data.__dict__, "train": split})
    base = models.create(model_name, data.num_classes, data.input_size)
    schedule = Schedule(epochs=1, batch_size=batch_size, lr=0.01, schedule="constant")
    ours, bare = _loop_pair(base, subset, schedule, runtime)
    ours(), bare()  # warm-up: allocator, kernels, first-touch of the weights
    ours_s, bare_s = [], []
    for _ in range(repeats):
        ours_s.append(ours())
        bare_s.append(bare())
    ours_med, bare_med = statistics.median(ours_s), statistics.median(bare_s)
    return {
        "model": model_name,
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "ours_ms_per_step": ours_med / steps * 1e3,
        "bare_ms_per_step": bare_med / steps * 1e3,
        "ratio_ours_over_bare": ours_med / bare_med,
        "target_max_ratio": 1.05,
    }


def _loop_pair(base: nn.Module, data: DatasetSplits, schedule: Schedule, runtime: Runtime):
    """Two closures that each time one pass over the same images, from identical model copies."""
    ours_model = copy.deepcopy(base).to(runtime.device, memory_format=runtime.memory_format)
    bare_model = copy.deepcopy(base).to(runtime.device, memory_format=runtime.memory_format)
    ours_opt, bare_opt = make_optimizer(ours_model, schedule), make_optimizer(bare_model, schedule)
    loader = BatchLoader(
        data.train,
        schedule.batch_size,
        shuffle=True,
        augment=True,
        mean=data.mean,
        std=data.std,
        device=runtime.device,
        seed=0,
        channels_last=runtime.channels_last,
    )
    x_all = normalize(data.train.images.to(runtime.device), data.mean, data.std)
    x_all = x_all.contiguous(memory_format=runtime.memory_format)
    batches = list(
        zip(
            x_all.split(schedule.batch_size),
            data.train.labels.to(runtime.device).split(schedule.batch_size),
            strict=True,
        )
    )

    trainer = EpochTrainer(ours_model, loader, ours_opt, schedule, runtime, desc="speed")

    def ours() -> float:
        start = time.perf_counter()
        trainer.run(0)
        _sync(runtime)
        return time.perf_counter() - start

    def bare() -> float:
        bare_model.train()
        start = time.perf_counter()
        for x, y in batches:
            with runtime.autocast:
                loss = F.cross_entropy(bare_model(x), y)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()
        _sync(runtime)
        return time.perf_counter() - start

    return ours, bare


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
    loader = BatchLoader(
        split,
        batch_size,
        shuffle=True,
        augment=True,
        mean=data.mean,
        std=data.std,
        device=runtime.device,
        seed=0,
        channels_last=runtime.channels_last,
    )
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


def format_speed(report: dict[str, Any]) -> str:
    t, d = report["train_step"], report["data_pipeline"]
    return "\n".join(
        [
            f"bench speed on {report['device']} ({report['cpu_or_gpu']}, {report['threads']} threads, "
            f"torch {report['torch']})",
            f"(a) training step, {t['model']}, batch {t['batch_size']}, median of {t['repeats']} alternating passes of "
            f"{t['steps']} steps:",
            f"    ours {t['ours_ms_per_step']:.1f} ms/step   bare PyTorch {t['bare_ms_per_step']:.1f} ms/step   "
            f"ratio ours/bare {t['ratio_ours_over_bare']:.3f} (target <= {t['target_max_ratio']})",
            f"(b) data pipeline, {d['images']} images, batch {d['batch_size']}, DataLoader workers {d['workers']}:",
            f"    ours (batched uint8) {d['ours_images_per_s']:,.0f} img/s",
            f"    ImageFolder+DataLoader {d['imagefolder_dataloader_images_per_s']:,.0f} img/s   "
            f"ratio {d['ratio_ours_over_imagefolder']:.1f}x (target >= {d['target_min_ratio']:.0f}x)",
            f"    PIL-from-arrays+DataLoader (torchvision CIFAR10 style) "
            f"{d['pil_arrays_dataloader_images_per_s']:,.0f} img/s   ratio {d['ratio_ours_over_pil_arrays']:.1f}x",
        ]
    )
