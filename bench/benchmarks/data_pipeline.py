"""``bench speed`` section (b): our batched uint8 augmentation against DataLoader pipelines.

Ours (``BatchLoader``: crop with padding and flip on whole uint8 batches) against torchvision
``ImageFolder`` + ``DataLoader`` with the standard per-image transforms (RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor, Normalize), in images/s (target >= 10x), and a torchvision
CIFAR10-style variant (PIL transforms from in-memory arrays, no JPEG decode). The per-image
dataset and transform are also what section (a)'s DataLoader loop trains from.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.config import Schedule
from bench.datasets import DatasetSplits, Split
from bench.errors import BenchError
from bench.training import Runtime, train_loader


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
    sync(runtime)
    return time.perf_counter() - start


def reference_transform(data: DatasetSplits):
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
    dataset = Subset(ImageFolder(str(root), transform=reference_transform(data)), range(images))
    return _time_dataloader(DataLoader(dataset, batch_size, shuffle=True, num_workers=workers))


class PILArrays(torch.utils.data.Dataset):
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
        DataLoader(PILArrays(split, reference_transform(data)), batch_size, shuffle=True, num_workers=workers)
    )


def _time_dataloader(loader) -> float:
    start = time.perf_counter()
    for x, _ in loader:
        x.sum()
    return time.perf_counter() - start


def sync(runtime: Runtime) -> None:
    """Wait for queued GPU work, so that a timer stops when the work is done."""
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
