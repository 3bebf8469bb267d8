"""Grid sweeps: a cartesian product of models x datasets x methods x targets x seeds from TOML, one
enqueued trial per cell. A cell lives in a trial user attribute (not in Optuna params), so a grid
extended later (another target) does not change a categorical's choices, which Optuna refuses."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from bench import config as configmod
from bench.errors import BenchError
from bench.sweeps.slots import CELL, LIVE, SURPLUS

GRID_AXES = ("models", "datasets", "methods", "targets", "seeds")
CELL_FIELDS = ("model", "dataset", "method", "target", "seed")


@dataclass(frozen=True)
class Grid:
    """A cartesian product of models x datasets x methods x targets x seeds, from TOML.

    Top-level keys: the five axes (lists), optional ``study``, ``preset``, ``objectives`` is not
    allowed (a grid maximises validation accuracy), and ``[set]``, a table of ``key = value``
    settings applied to every cell as ``--set`` would (e.g. ``"data.train_limit" = 2000``).
    ``study`` defaults to the file's stem (``grid.toml``: ``grid``).
    """

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    targets: tuple[float, ...]
    seeds: tuple[int, ...]
    study: str | None = None
    preset: str | None = None
    sets: tuple[str, ...] = ()

    def cells(self) -> list[dict[str, Any]]:
        product = itertools.product(self.models, self.datasets, self.methods, self.targets, self.seeds)
        return [dict(zip(CELL_FIELDS, c, strict=True)) for c in product]


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file; errors name the file, the key and what is valid."""
    data = configmod.load_toml(path)
    unknown = set(data) - {*GRID_AXES, "study", "preset", "set"}
    if unknown:
        raise BenchError(
            f"grid {path}: unknown keys {', '.join(sorted(unknown))}; valid: {', '.join(GRID_AXES)}, study, preset, set"
        )
    axes = {axis: _axis(path, data, axis) for axis in GRID_AXES}
    _check_grid_values(path, axes)
    sets = tuple(f"{key}={_toml_literal(value)}" for key, value in dict(data.get("set", {})).items())
    study = data.get("study") or Path(path).stem
    return Grid(**axes, study=study, preset=data.get("preset"), sets=sets)


def _axis(path: str | Path, data: dict[str, Any], axis: str) -> tuple:
    """One axis as a tuple; seeds default to [0] and datasets to ["cifar10"]."""
    values = data.get(axis, [0] if axis == "seeds" else ["cifar10"] if axis == "datasets" else None)
    if not isinstance(values, list) or not values:
        raise BenchError(f"grid {path}: '{axis}' must be a non-empty list")
    return tuple(values)


def _check_grid_values(path: str | Path, axes: dict[str, tuple]) -> None:
    from bench import models, registry

    for name in axes["models"]:
        models.validate_name(name)
    for name in axes["methods"]:
        registry.get_method(name)
    for target in axes["targets"]:
        if not isinstance(target, int | float) or not 0 <= target < 1:
            raise BenchError(f"grid {path}: targets are FLOPs reductions in [0, 1), got {target!r}")
    for seed in axes["seeds"]:
        if not isinstance(seed, int):
            raise BenchError(f"grid {path}: seeds are integers, got {seed!r}")


def _toml_literal(value: Any) -> str:
    """A value as ``--set`` parses it (TOML literal syntax)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, list) else "[" + ", ".join(_toml_literal(v) for v in value) + "]"


def cell_key(cell: Mapping[str, Any]) -> str:
    return json.dumps(dict(cell), sort_keys=True)


def enqueue_missing_cells(study: optuna.Study, cells: list[dict[str, Any]]) -> tuple[int, int]:
    """Enqueue the cells no live trial covers; returns (cells already covered, cells enqueued)."""
    trials = study.get_trials(deepcopy=False)
    covered = {t.user_attrs.get(CELL) for t in trials if t.state in LIVE and not t.user_attrs.get(SURPLUS)}
    missing = [c for c in cells if cell_key(c) not in covered]
    for cell in missing:
        study.enqueue_trial({}, user_attrs={CELL: cell_key(cell)})
    return len(cells) - len(missing), len(missing)
