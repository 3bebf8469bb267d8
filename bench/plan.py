"""A pruning plan: for each prunable unit, the indices of the channels that stay.

A plan is plain data (JSON), stored with every run, and replayable onto a fresh model with
``surgery.apply(models.create(name), plan)``. Multi-round methods store one plan per round; each
round's indices refer to the model as the previous rounds left it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError


@dataclass(frozen=True)
class PruningPlan:
    """Kept channel indices per unit (unit name = the producing conv's qualified name).

    ``channels`` holds each unit's channel count before this plan, so a plan can be checked against
    the model it is applied to. ``backend`` says how its units were found: ``"direct"`` (the model
    declares them) or ``"depgraph"`` (Torch-Pruning's dependency graph).
    """

    model: str
    keep: Mapping[str, tuple[int, ...]]
    channels: Mapping[str, int]
    backend: str = "direct"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kept in self.keep.items():
            total = self.channels.get(name)
            if total is None:
                raise BenchError(f"plan unit '{name}' has no channel count")
            if not kept:
                raise BenchError(f"plan leaves unit '{name}' with zero channels; keep at least one")
            if len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= total:
                raise BenchError(f"plan unit '{name}': kept indices must be unique and in [0, {total})")

    def kept_counts(self) -> dict[str, int]:
        return {name: len(kept) for name, kept in self.keep.items()}

    def pruned_channels(self) -> int:
        return sum(self.channels[n] - len(k) for n, k in self.keep.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "channels": dict(self.channels),
            "keep": {n: list(k) for n, k in self.keep.items()},
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        try:
            keep = {n: tuple(int(i) for i in k) for n, k in data["keep"].items()}
            return cls(data["model"], keep, dict(data["channels"]), data.get("backend", "direct"), data.get("meta", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchError(f"malformed pruning plan: {exc!r}; expected keys model, channels, keep") from exc


def save_plans(plans: list[PruningPlan], path: Path) -> None:
    """Write the rounds' plans as one JSON list, atomically (a killed run never leaves half a file)."""
    from bench.checkpoint import atomic_write_text

    atomic_write_text(json.dumps([p.to_dict() for p in plans], indent=1), path)


def load_plans(path: Path) -> list[PruningPlan]:
    data = json.loads(path.read_text())
    return [PruningPlan.from_dict(d) for d in (data if isinstance(data, list) else [data])]
