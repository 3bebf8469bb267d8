"""Atomic checkpoint files: a killed run never leaves a half-written file behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.atomic import atomic_write, atomic_write_text

__all__ = ["atomic_save", "atomic_write_text", "load"]


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write(path, lambda file: torch.save(obj, file))


def load(path: Path) -> Any:
    """Load with ``weights_only=True``: tensors, containers and primitives only."""
    return torch.load(path, map_location="cpu", weights_only=True)
