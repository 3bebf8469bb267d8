"""Atomic checkpoint files: a killed run never leaves a half-written file behind.

The module also remembers, for this process, the last *resume point*: work that the same command
run again would not redo (an epoch checkpoint written or restored by the training loop, a finished
round or run). The CLI reads it when a Ctrl-C or SIGTERM stops a command, to say either "run the
same command again to resume" or that nothing was saved and a rerun starts over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.atomic import atomic_write, atomic_write_text

__all__ = ["atomic_save", "atomic_write_text", "last_resume_point", "load", "note_resume_point"]

_last_resume_point: str | None = None  # what this process saved (or restored) that a rerun reuses


def atomic_save(obj: Any, path: Path, *, resume_point: str | None = None) -> None:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename). ``resume_point`` says
    what the file lets a rerun skip (``"dense s0 epoch 2/4"``); caches and results pass none."""
    atomic_write(path, lambda file: torch.save(obj, file))
    if resume_point is not None:
        note_resume_point(resume_point)


def load(path: Path) -> Any:
    """Load with ``weights_only=True``: tensors, containers and primitives only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def note_resume_point(what: str) -> None:
    """Record that work ``what`` is saved where the same command run again will find it (a
    checkpoint written or restored, a finished round, a finished (method, seed) run)."""
    global _last_resume_point
    _last_resume_point = what


def last_resume_point() -> str | None:
    """The last resume point this process saved or restored, or None: a rerun would start over."""
    return _last_resume_point
