"""The sweep spec: everything a worker needs, validated once and shared as JSON between processes.

The invoking command builds a :class:`SweepSpec`, writes it with :func:`write_spec`, and every
worker process (on this machine or another) reads it back with :meth:`SweepSpec.from_json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import config as configmod
from bench.atomic import atomic_write_text
from bench.config import RunConfig
from bench.errors import BenchError
from bench.schema import Metric

OBJECTIVES = {"acc": "maximize", "flops": "maximize"}  # val accuracy; achieved FLOPs reduction
# each objective's value, named as in MLflow: the study's metric names (optuna-dashboard shows them)
OBJECTIVE_METRICS = {"acc": Metric.BEST_VAL_ACC, "flops": Metric.FLOPS_REDUCTION}
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker needs, JSON-serialisable so worker processes (and machines) share it.

    ``trials``: slots to fill (search) or the grid's cell count. ``target_range``: the FLOPs
    reduction searched when FLOPs is an objective (fraction of MACs). ``heartbeat_s``: how often a
    running trial proves its worker alive; after ``grace_s`` without one it is failed and retried
    (at most ``max_retry`` times). ``threads``: torch CPU threads per worker.
    """

    study: str
    storage: str
    kind: str  # "search" or "grid"
    base: dict[str, Any]  # the resolved RunConfig every trial starts from (RunConfig.to_dict())
    method: str | None = None  # search: the method whose search space is sampled
    trials: int = 0
    objectives: tuple[str, ...] = ("acc",)
    pruner: str = "median"
    target_range: tuple[float, float] = (0.2, 0.8)
    sampler_seed: int = 0
    heartbeat_s: int = 10
    grace_s: int = 30
    max_retry: int = 2
    threads: int = 0  # 0: torch's default
    parent_run_id: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("search", "grid"):
            raise BenchError(f"sweep kind must be search or grid, got {self.kind!r}")
        _check_objectives(self.objectives)
        if self.pruner not in PRUNERS:
            raise BenchError(f"unknown pruner '{self.pruner}'; valid: {', '.join(PRUNERS)}")
        if self.kind == "search" and self.trials < 1:
            raise BenchError(f"--trials must be >= 1, got {self.trials}")
        lo, hi = self.target_range
        if not 0 <= lo < hi < 1:
            raise BenchError(f"the searched FLOPs reduction range must satisfy 0 <= lo < hi < 1, got {lo}, {hi}")
        if self.heartbeat_s < 1 or self.grace_s <= self.heartbeat_s:
            raise BenchError(f"need heartbeat >= 1 s and grace > heartbeat, got {self.heartbeat_s}, {self.grace_s}")

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def base_config(self) -> RunConfig:
        """The RunConfig every trial starts from (``base`` is its JSON form)."""
        return configmod.from_dict(json.loads(json.dumps(self.base)))

    def tracker(self):
        """The MLflow store and experiment of the sweep's runs."""
        from bench.tracking import Tracker, resolve_tracking_uri

        base = self.base_config()
        return Tracker(resolve_tracking_uri(base.tracking_uri, Path(base.results_dir).resolve()), base.experiment)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> SweepSpec:
        data = json.loads(text)
        data["objectives"] = tuple(data["objectives"])
        data["target_range"] = tuple(data["target_range"])
        return SweepSpec(**data)


def _check_objectives(objectives: tuple[str, ...]) -> None:
    """Known, distinct, and validation accuracy first (the value single-objective studies rank by)."""
    for name in objectives:
        if name not in OBJECTIVES:
            raise BenchError(f"unknown objective '{name}'; valid: {', '.join(OBJECTIVES)}")
    if len(set(objectives)) != len(objectives) or not objectives:
        raise BenchError(f"--objectives must name distinct objectives, got {','.join(objectives)}")
    if objectives[0] != "acc":
        raise BenchError("the first objective must be acc (validation accuracy); e.g. --objectives acc,flops")


def default_study_name(method: str, model: str, dataset: str, preset: str, objectives: tuple[str, ...]) -> str:
    """The study a search sweep joins when ``--study`` is not given: ``<method>-<model>-<dataset>-<preset>``,
    plus ``-pareto`` with several objectives (``preset`` may be a path: its file stem is used)."""
    return "-".join([method, model, dataset, Path(preset).stem] + (["pareto"] if len(objectives) > 1 else []))


def write_spec(spec: SweepSpec) -> Path:
    """Write the spec under ``<results>/sweeps/`` for the worker processes; returns the file."""
    path = Path(spec.base_config().results_dir).resolve() / "sweeps" / f"{_safe(spec.study)}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.to_json(), path)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
