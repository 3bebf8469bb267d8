"""Run configuration: frozen dataclasses, validated once, hashed.

The CLI, a TOML file and (later) an Optuna trial are front ends that build the same nested dict,
which :func:`from_dict` turns into a :class:`RunConfig`. Layering, lowest first: the preset file,
``--config FILE.toml``, explicit CLI flags, then ``--set key=value``. The resolved config is stored
with every run and its hash names the cached artifacts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from bench.errors import BenchError, closest

PRESETS = ("smoke", "quick", "paper")
DEFAULT_TARGET = 0.5  # fraction of MACs removed when no pruning rule is given
PRUNE_RULES = ("target_flops_reduction", "channel_fraction", "layer_ratio", "plan")
SCHEDULES = ("multistep", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
SPARSITY_CHECKPOINTS = ("last", "best_val")
SCRATCH_BUDGETS = ("E", "B", "pipeline")
RUN_SOURCE = "run:"  # a plan source "run:<MLflow run id>": a finished method run of the tracking store


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BenchError(message)


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    _check(value in valid, f"{name} must be one of {', '.join(valid)}, got '{value}'")


@dataclass(frozen=True)
class Schedule:
    """One training phase: SGD hyperparameters and the learning-rate schedule.

    ``lr`` is per batch of ``batch_size``; ``milestones`` are fractions of ``epochs`` at which the
    lr is multiplied by ``gamma`` (multistep). ``warmup_epochs`` ramps the lr linearly from ~0.
    """

    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check(
            all(0 < m < 1 for m in self.milestones),
            f"milestones are fractions in (0, 1), got {self.milestones}",
        )
        _check(
            0 <= self.warmup_epochs <= max(self.epochs, 0),
            f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}",
        )
        _check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where, and which slice of it. ``None`` sizes mean the dataset's default."""

    name: str = "cifar10"
    root: str | None = None
    val_size: int | None = None  # images carved from train for model selection (CIFAR default 5000)
    split_seed: int = 0  # the validation split is the same for every run seed
    train_limit: int | None = None  # use only this many training images (smoke runs)
    test_limit: int | None = None
    augment: bool = True
    download: bool = False

    def __post_init__(self) -> None:
        for name in ("val_size", "train_limit", "test_limit"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"data.{name} must be >= 1 or unset, got {value}")


@dataclass(frozen=True)
class PruneConfig:
    """How scores become a plan. Exactly one rule is active (see ``bench.allocation``)."""

    target_flops_reduction: float | None = None  # fraction of conv+linear MACs removed; 0.5 if no rule is set
    channel_fraction: float | None = None  # fraction of prunable channels removed, one global threshold
    layer_ratio: float | None = None  # the same fraction of every unit (Li et al.)
    plan: str | None = None  # a named plan, e.g. "l1-a"
    min_keep_fraction: float = 0.0  # every unit keeps at least max(1, ceil(this * C)) channels
    # kept counts rounded up to a multiple of this (1: off). Kernels run fastest on channel counts
    # that fill their vector width; a FLOPs target is then met with the rounded counts.
    round_to: int = 1
    # which weights of a sparsity-training phase are pruned: the last epoch's (default: sparsity grows
    # through training, and the best-validation epoch can be an early, less sparse one) or the best-val one
    sparsity_checkpoint: str = "last"

    def __post_init__(self) -> None:
        _check_choice("prune.sparsity_checkpoint", self.sparsity_checkpoint, SPARSITY_CHECKPOINTS)
        for name in ("target_flops_reduction", "channel_fraction", "layer_ratio"):
            value = getattr(self, name)
            _check(value is None or 0 <= value < 1, f"prune.{name} must be in [0, 1), got {value}")
        _check(
            0 <= self.min_keep_fraction < 1,
            f"prune.min_keep_fraction must be in [0, 1), got {self.min_keep_fraction}",
        )
        _check(
            isinstance(self.round_to, int) and self.round_to >= 1,
            f"prune.round_to must be an integer >= 1, got {self.round_to!r}",
        )
        active = [n for n in PRUNE_RULES if getattr(self, n) is not None]
        if not active:  # frozen: the default rule is filled in once, here
            object.__setattr__(self, "target_flops_reduction", DEFAULT_TARGET)
            active = ["target_flops_reduction"]
        _check(
            len(active) == 1,
            f"exactly one pruning rule must be set, got {active or 'none'}; "
            "valid: target_flops_reduction, channel_fraction, layer_ratio, plan",
        )

    @property
    def rule(self) -> str:
        return next(n for n in PRUNE_RULES if getattr(self, n) is not None)


@dataclass(frozen=True)
class ScratchConfig:
    """The scratch control (Liu et al., ICLR 2019): a method's pruned architecture trained from a fresh
    init with the run's dense recipe. ``source``: a method of this run, ``run:<MLflow run id>``, or ""
    (the first other method of ``--methods``). ``budgets``: which rows ``--methods ...,scratch`` adds:
    "E" (Scratch-E: the dense model's epochs, or ``--budget`` in matched mode), "B" (Scratch-B: E times
    dense/pruned MACs, the same compute) and "pipeline" (the source's whole training budget)."""

    source: str = ""
    budgets: tuple[str, ...] = ("E", "B")

    def __post_init__(self) -> None:
        _check(len(self.budgets) >= 1, "scratch.budgets must name at least one of " + ", ".join(SCRATCH_BUDGETS))
        for budget in self.budgets:
            _check_choice("scratch.budgets", budget, SCRATCH_BUDGETS)
        _check(len(set(self.budgets)) == len(self.budgets), f"scratch.budgets must be unique, got {self.budgets}")
        _check(
            self.source != RUN_SOURCE and not self.source.endswith(":"),
            f"scratch.source '{self.source}' needs an MLflow run id after '{RUN_SOURCE}'",
        )


@dataclass(frozen=True)
class MethodOverrides:
    """Per-method settings: hyperparameters (``params``) and schedules that replace the run's."""

    params: dict[str, Any] = field(default_factory=dict)
    sparsity: Schedule | None = None
    finetune: Schedule | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a ``bench run``. Field docs give units; see the presets for values."""

    model: str = "resnet20"
    methods: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    data: DataConfig = DataConfig()
    dense: Schedule = Schedule()  # the dense baseline's schedule
    sparsity: Schedule | None = None  # sparsity training; None = the dense schedule
    finetune: Schedule = Schedule(epochs=1, lr=0.01)
    prune: PruneConfig = PruneConfig()
    method: dict[str, MethodOverrides] = field(default_factory=dict)
    scratch: ScratchConfig = ScratchConfig()
    # matched-budget mode: every method trains this many epochs in all (its dense baseline's included
    # when it starts from it); sparsity and fine-tune phases are scaled to fit (bench.budget)
    budget: int | None = None
    device: str = "auto"
    deterministic: bool = False
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the training forward (eager fallback, with the reason, if it fails)
    compile_backend: str = "inductor"
    eval_batch_size: int = 512
    published: bool = False  # print the published figures (results/reference/) beside ours
    latency: bool = False  # measure CPU/GPU latency of each final model
    latency_batch_size: int = 64
    results_dir: str = "results"
    tracking_uri: str | None = None
    experiment: str = "bench"
    preset: str | None = None

    def __post_init__(self) -> None:
        _check(len(self.seeds) >= 1, "seeds must name at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), f"seeds must be unique, got {self.seeds}")
        _check(all(s >= 0 for s in self.seeds), f"seeds must be non-negative integers, got {self.seeds}")
        _check(self.budget is None or self.budget >= 1, f"budget must be >= 1 epoch, got {self.budget}")
        _check(len(set(self.methods)) == len(self.methods), f"methods must be unique, got {self.methods}")
        _check_choice("device", self.device, DEVICES)
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(self.latency_batch_size >= 1, f"latency_batch_size must be >= 1, got {self.latency_batch_size}")

    def sparsity_schedule(self, method: str) -> Schedule:
        override = self.method.get(method)
        return (override and override.sparsity) or self.sparsity or self.dense

    def finetune_schedule(self, method: str) -> Schedule:
        override = self.method.get(method)
        return (override and override.finetune) or self.finetune

    def method_params(self, method: str) -> dict[str, Any]:
        override = self.method.get(method)
        return dict(override.params) if override else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, *, exclude: tuple[str, ...] = ("tracking_uri", "experiment", "results_dir", "preset")) -> str:
        """Stable short hash of the fields that determine results.

        ``preset`` is only a label (a name or a file path): the values it set are hashed already.
        """
        return stable_hash({k: v for k, v in self.to_dict().items() if k not in exclude})


def stable_hash(obj: Any, length: int = 12) -> str:
    """sha256 of canonical JSON, first ``length`` hex digits."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# --- building configs from dicts -------------------------------------------------------------


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a nested dict (TOML shape); unknown keys are errors."""
    return _build(RunConfig, data, "")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise BenchError(f"'{where.rstrip('.') or 'config'}' must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            hint = closest(key, known)
            suggestion = f" Did you mean '{where}{hint}'?" if hint else ""  # the whole path, as --set takes it
            raise BenchError(f"unknown config key '{where}{key}'.{suggestion} Valid keys: {', '.join(sorted(known))}")
        kwargs[key] = _convert(hints[key], value, f"{where}{key}")
    try:
        return cls(**kwargs)
    except BenchError as exc:  # "epochs must be >= 0" -> "finetune.epochs must be >= 0": say which table
        message = str(exc)
        if where and message.split(" ", 1)[0] in known:
            raise BenchError(f"{where}{message}") from exc
        raise


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_convert(args[0], v, where) for v in items)
    if origin is dict:
        if not isinstance(value, dict):
            raise BenchError(f"'{where}' must be a table, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise BenchError(f"'{where}' must be {hint.__name__}, got {value!r}")
    return value


# --- layering: presets, TOML files, --set ------------------------------------------------------


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"config file '{path}' does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"malformed TOML in '{path}': {exc}") from exc


def preset_path(name: str) -> Path:
    """A preset name (smoke|quick|paper) or the path of a user's copy of one."""
    if name in PRESETS:
        return Path(str(resources.files("bench") / "presets" / f"{name}.toml"))
    if name.endswith(".toml"):
        return Path(name)
    hint = closest(name, PRESETS)
    suggestion = f" Did you mean '{hint}'?" if hint else ""
    raise BenchError(f"unknown preset '{name}'.{suggestion} Valid presets: {', '.join(PRESETS)}, or a .toml path")


def parse_set(item: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed as TOML, else kept as a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise BenchError(f"malformed --set '{item}'; expected key=value, e.g. --set dense.epochs=10")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; ``update`` wins. Neither input is modified."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_layer(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """Merge a higher layer; a pruning rule it sets replaces the rule of the layers below."""
    if any(rule in layer.get("prune", {}) for rule in PRUNE_RULES) and "prune" in base:
        base = {**base, "prune": {k: v for k, v in base["prune"].items() if k not in PRUNE_RULES}}
    return merge(base, layer)


def resolve(preset: str | None, config_file: str | None, flags: dict[str, Any], sets: list[str]) -> RunConfig:
    """Layer preset < TOML file < CLI flags < --set and validate the result."""
    data: dict[str, Any] = {}
    if preset:
        data = merge(data, load_toml(preset_path(preset)))
        data["preset"] = preset
    if config_file:
        data = merge_layer(data, load_toml(config_file))
    data = merge_layer(data, flags)
    for item in sets:
        data = merge_layer(data, parse_set(item))
    return from_dict(data)
