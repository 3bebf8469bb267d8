"""Batched augmentation on uint8 image tensors, and an in-memory batch loader (airbench style).

Everything works on whole batches with tensor ops on the images' own device: no PIL, no Python
loop over images, no DataLoader workers, and no host synchronisation, so on a GPU the input
pipeline costs a few kernels per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.datasets import Split


def default_padding(input_size: int) -> int:
    """Random-crop padding in px: 4 for 32x32 (CIFAR convention), 8 for 64x64 (Tiny ImageNet)."""
    return max(1, input_size // 8)


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` px, take a random crop of the original size, flip half of them.

    ``images`` is uint8 (N, C, H, W); offsets and flips are drawn per image from ``generator``,
    which must live on the images' device. One gather does every crop and flip at once.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be NCHW, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = images.shape
    dev = images.device
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    flip = torch.rand((n, 1), generator=generator, device=dev) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip, cols.flip(0), cols) + dx  # (N, W): a flipped crop reads its window backwards
    rows = torch.arange(h, device=dev) + dy  # (N, H)
    padded = F.pad(images, (padding,) * 4) if padding else images
    return padded[
        torch.arange(n, device=dev).view(n, 1, 1, 1),
        torch.arange(c, device=dev).view(1, c, 1, 1),
        rows.view(n, 1, h, 1),
        cols.view(n, 1, 1, w),
    ]


def normalize(
    images_uint8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel; mean/std in [0, 1] units (pixel / 255).

    Computed in float32 and then cast, so half-precision outputs round only once.
    """
    shift, scale = _norm_params(mean, std, images_uint8.device)
    return _normalize(images_uint8, shift, scale, dtype, channels_last)


def _norm_params(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(255 * mean, 1 / (255 * std)) shaped (1, C, 1, 1) on ``device``: x * scale - shift * scale."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (mean_t * 255).to(device), (1 / (std_t * 255)).to(device)


def _normalize(
    images: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, channels_last: bool
) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != shift.shape[1]:
        raise ValueError(f"expected uint8 (N, {shift.shape[1]}, H, W) images, got {images.dtype} {tuple(images.shape)}")
    x = images.float().sub_(shift).mul_(scale)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=fmt)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that is a pure function of (seed, epoch), well mixed."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got {seed} and {epoch}")
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class BatchLoader:
    """Iterate one split in batches of ``(x, y)``: x normalised float (N, C, H, W), y int64, on ``device``.

    The whole split is moved to ``device`` once (all of CIFAR is ~180 MB of uint8). The order and
    the augmentation of epoch ``e`` depend only on ``(seed, e)``, so a run resumed after a kill
    replays exactly the same epoch: call ``set_epoch(e)`` before iterating. Each ``iter()`` uses
    the current epoch and then advances it by one, so a loop that never calls ``set_epoch`` still
    gets a fresh order every epoch.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        seed: int,
        drop_last: bool = False,
        padding: int = 4,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.shift, self.scale = _norm_params(mean, std, self.device)  # on device once: no copy per batch
        self.seed, self.drop_last, self.padding, self.channels_last = seed, drop_last, padding, channels_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (order and augmentation)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, epoch))
        n = len(self.labels)
        order = torch.randperm(n, generator=gen, device=self.device) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            idx = order[lo:hi] if order is not None else slice(lo, hi)
            x, y = self.images[idx], self.labels[idx]
            if self.augment:
                x = random_crop_flip(x, self.padding, gen)
            yield _normalize(x, self.shift, self.scale, torch.float32, self.channels_last), y
