"""The names bench writes to MLflow and reads back, and the result record of one (method, seed).

Torch-free (imported by ``reports``): the writer (``bench.tracking``, the runner, sweeps) and the
readers (``bench.store``, ``reports.source``, ``bench sparsity``) take every tag, param, metric and
artifact name from here, so a rename happens in one place and old stores stay readable.

Layout of a stored invocation: a parent run (``Tag.KIND`` "run" or "sweep") with one nested run per
(method or dense, seed), nested by MLflow's own ``PARENT_TAG``. Every run carries MLflow's standard
source tags (``Source``). A nested run's result fields are stored by what they are
(``Result.metrics``, ``settings``, ``tags``): measurements are metrics (accuracies, params, MACs, the
reductions, channels removed, latency median and IQR); settings are params (the seed, the training
budget ``train_epochs``, ``train_images`` and ``budget/*``); the latency protocol and text fields
are ``bench.<field>`` tags (``bench.latency_batch_size``). Stores written before issue 14 hold the
seed, the budget and the numeric latency protocol as metrics: readers go through
``stored_number``, which reads either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

PARENT_TAG: Final = "mlflow.parentRunId"  # MLflow's own nesting tag: what its UI groups runs by
DENSE: Final = "dense"  # the method name of the dense baseline's runs and rows


class Tag:
    """MLflow run tags (string values)."""

    PARENT: Final = PARENT_TAG
    KEY: Final = "bench.key"  # the caller's run key: a rerun after a kill resumes the run with it
    RESUMES: Final = "bench.resumes"  # how many times the run was picked up again after a kill
    KIND: Final = "bench.kind"  # on parents: "run" (bench run) or "sweep"
    CONFIG_HASH: Final = "bench.config_hash"
    ERROR: Final = "bench.error"  # repr of the exception that failed the run
    STOPPED: Final = "bench.stopped"  # why a run was stopped on purpose (a pruned sweep trial)
    # identity: on every run, so a report can group nested runs without their parent
    MODEL: Final = "bench.model"
    DATASET: Final = "bench.dataset"
    DATA_SOURCE: Final = "bench.data_source"
    DATA_LABEL: Final = "bench.data_label"
    NUM_CLASSES: Final = "bench.num_classes"  # the model's classifier width: bench.load_pruned rebuilds it
    INPUT_SIZE: Final = "bench.input_size"  # px, square inputs the model was built and measured for
    MLFLOW_MODEL_ERROR: Final = "bench.mlflow_model_error"  # why the MLflow model was not logged
    METHOD: Final = "bench.method"
    SEED: Final = "bench.seed"
    PRUNE_RULE: Final = "bench.prune_rule"  # e.g. "target_flops_reduction"
    PRUNE_VALUE: Final = "bench.prune_value"
    BASELINE_KEY: Final = "bench.baseline_key"  # hash of what determines the dense baseline
    BASELINE_REUSED: Final = "bench.baseline_reused"  # "true" when read from the cache
    PLAN_SOURCE: Final = "bench.plan_source"  # an inherited architecture's source ("l1", "run:<id>")
    PLAN_SOURCE_RUN: Final = "bench.plan_source_run"
    STEM_ADAPTATION: Final = "bench.stem_adaptation"  # how a timm model's stem was adapted to 32/64 px, or "none"
    # the protocol digest: every setting that shaped the result except the seed (``bench.protocol``);
    # reports aggregate runs of one digest only. The settings themselves are params ``protocol.<key>``.
    PROTOCOL: Final = "bench.protocol"
    # the latency protocol (``result_tag``): every field of ``measure.LatencyProtocol``, numbers included
    # (batch_size, input_size, threads, warmup, repeats, rounds: metrics in stores before issue 14)
    LATENCY_DEVICE: Final = "bench.latency_device"
    LATENCY_TIMER: Final = "bench.latency_timer"
    LATENCY_DTYPE: Final = "bench.latency_dtype"
    LATENCY_BATCH_SIZE: Final = "bench.latency_batch_size"
    # sweeps
    SWEEP: Final = "bench.sweep"  # on a trial's run: the sweep kind
    STUDY: Final = "optuna.study"
    TRIAL: Final = "optuna.trial"
    STORAGE: Final = "optuna.storage"  # on a sweep parent, credentials redacted


class Source:
    """MLflow's standard source tags (``mlflow.utils.mlflow_tags``), on every run, so the MLflow UI's
    Source and User columns are filled (``bench.provenance.source_tags``)."""

    GIT_COMMIT: Final = "mlflow.source.git.commit"
    NAME: Final = "mlflow.source.name"  # the entry point: "python -m bench run", else the script
    TYPE: Final = "mlflow.source.type"  # "LOCAL"
    USER: Final = "mlflow.user"
    LOCAL: Final = "LOCAL"


class Kind:
    """Values of ``Tag.KIND``."""

    RUN: Final = "run"
    SWEEP: Final = "sweep"


def result_tag(field_name: str) -> str:
    """The tag a text (non-numeric) result field is stored under: ``latency_device`` -> ``bench.latency_device``."""
    return f"bench.{field_name}"


def compile_tag(phase: str) -> str:
    """The tag holding ``torch.compile``'s status for a training phase: ``bench.compile.finetune``."""
    return f"bench.compile.{phase}"


class Env:
    """Provenance tags (``bench.provenance.environment``): code, libraries, hardware."""

    PREFIX: Final = "env."
    GIT_SHA: Final = "env.git_sha"
    GIT_DIRTY: Final = "env.git_dirty"
    PYTHON: Final = "env.python"
    TORCH: Final = "env.torch"
    TORCHVISION: Final = "env.torchvision"
    TIMM: Final = "env.timm"
    MLFLOW: Final = "env.mlflow"
    OPTUNA: Final = "env.optuna"
    FVCORE: Final = "env.fvcore"
    TORCH_PRUNING: Final = "env.torch_pruning"
    CUDA: Final = "env.cuda"
    CUDA_AVAILABLE: Final = "env.cuda_available"
    CUDNN: Final = "env.cudnn"
    DEVICE: Final = "env.device"
    TORCH_THREADS: Final = "env.torch_threads"
    HOSTNAME: Final = "env.hostname"
    PLATFORM: Final = "env.platform"


def env_tag(name: str) -> str:
    """``torch`` -> ``env.torch``."""
    return f"{Env.PREFIX}{name}"


class Param:
    """Top-level MLflow param keys; nested values are flattened to dotted keys (``prune.target_flops_reduction``).

    A parent run logs the whole resolved config (``RunConfig.to_dict()``) flattened; a method run logs these.
    """

    METHOD: Final = "method"
    METHOD_CONFIG: Final = "method_config"
    SPARSITY: Final = "sparsity"  # the sparsity schedule, or "dense"
    FINETUNE_SCHEDULE: Final = "finetune_schedule"
    TRAIN_SCHEDULE: Final = "train_schedule"  # a scratch row's training schedule (the dense recipe)
    PHASE_EPOCHS: Final = "phase_epochs"  # epochs of every phase per round, and the matched-budget scale
    PRUNE: Final = "prune"
    SWEEP: Final = "sweep"  # a sweep parent's spec
    TARGET_FLOPS: Final = "prune.target_flops_reduction"  # read by reports for runs older than Tag.PRUNE_RULE
    PROTOCOL_PREFIX: Final = "protocol."  # ``protocol.dense.epochs``: one flattened setting of the protocol
    # a method or dense run's settings among its result fields (``Result.settings``; metrics before issue 14)
    SEED: Final = "seed"  # also the tag bench.seed
    TRAIN_EPOCHS: Final = "train_epochs"  # the training budget: every epoch that produced the model
    TRAIN_IMAGES: Final = "train_images"  # the same budget in training images seen


def protocol_param(key: str) -> str:
    """The param holding one protocol setting: ``dense.epochs`` -> ``protocol.dense.epochs``."""
    return f"{Param.PROTOCOL_PREFIX}{key}"


class Metric:
    """MLflow metric names: measurements only. Result fields are logged once (step 0); per-epoch stats
    use ``epoch_metric``. ``SEED``, ``TRAIN_EPOCHS``, ``TRAIN_IMAGES`` and the latency protocol's
    numbers (``LATENCY_BATCH_SIZE``, ``LATENCY_REPEATS``) are result-row keys that are settings: stored
    as params and tags since issue 14, as metrics before (``stored_number`` reads both)."""

    SEED: Final = Param.SEED
    TEST_ACC: Final = "test_acc"  # fraction in [0, 1], of the best-validation checkpoint
    BEST_VAL_ACC: Final = "best_val_acc"
    PARAMS: Final = "params"  # count
    MACS: Final = "macs"  # multiply-accumulates of one forward of one image
    DENSE_TEST_ACC: Final = "dense_test_acc"
    DENSE_PARAMS: Final = "dense_params"
    DENSE_MACS: Final = "dense_macs"
    ACC_CHANGE: Final = "acc_change"  # test_acc - dense_test_acc
    PARAMS_REDUCTION: Final = "params_reduction"  # 1 - params / dense_params
    FLOPS_REDUCTION: Final = "flops_reduction"  # 1 - macs / dense_macs
    TRAIN_EPOCHS: Final = Param.TRAIN_EPOCHS
    TRAIN_IMAGES: Final = Param.TRAIN_IMAGES
    CHANNELS_REMOVED: Final = "channels_removed"  # achieved: 1 - kept / dense prunable channels
    LATENCY_PREFIX: Final = "latency_"
    LATENCY_MEDIAN: Final = "latency_median_ms"  # ms per batch
    LATENCY_IQR: Final = "latency_iqr_ms"
    LATENCY_BATCH_SIZE: Final = "latency_batch_size"
    LATENCY_REPEATS: Final = "latency_repeats"
    # a sweep parent's counts
    TRIALS_COMPLETE: Final = "trials_complete"
    TRIALS_PRUNED: Final = "trials_pruned"
    TRIALS_FAILED: Final = "trials_failed"


class Phase:
    """Training phases, the prefixes of per-epoch metrics (``finetune/val_acc``)."""

    DENSE: Final = "dense"
    SPARSITY: Final = "sparsity"
    FINETUNE: Final = "finetune"
    TRAIN: Final = "train"  # an inherited architecture trained once
    PRUNE: Final = "prune"  # not a training phase: importance, allocation and surgery


def epoch_metric(phase: str, stat: str) -> str:
    """A per-epoch statistic of a phase: ``epoch_metric("finetune", "val_acc")`` -> ``finetune/val_acc``."""
    return f"{phase}/{stat}"


BUDGET_PREFIX: Final = "budget/"


def budget_metric(phase: str, unit: str) -> str:
    """One phase's share of the training budget: ``budget_metric("finetune", "epochs")`` ->
    ``budget/finetune_epochs`` (phases: dense, sparsity, finetune, train; units: epochs, images).
    A result-row key stored as a param (a metric before issue 14)."""
    return f"{BUDGET_PREFIX}{phase}_{unit}"


def sparsity_metric(kind: str, eps: float) -> str:
    """A sparsity curve at one eps: ``sparsity_metric("structured", 1e-3)`` -> ``sparsity/structured_eps_1e-03``."""
    return f"sparsity/{kind}_eps_{eps:.0e}"


def is_sparsity_metric(name: str) -> bool:
    """Whether ``name`` is a sparsity curve at one eps (not a sparsity-phase epoch metric such as
    ``sparsity/val_acc``)."""
    return name.startswith("sparsity/") and "_eps_" in name


class Artifact:
    """Artifact file names (JSON unless named otherwise)."""

    CONFIG: Final = "config.json"  # the resolved RunConfig, on parents and nested runs
    RESULTS: Final = "results.json"  # parent: one row per (method, seed), pandas "split" table
    COMPARISON_TABLE: Final = "comparison_table.json"  # parent: the printed comparison
    PLANS: Final = "plans.json"  # method run: the PruningPlan of each round
    MODEL: Final = "model.pt"  # the final state dict (torch)
    SPARSITY: Final = "sparsity.json"  # SparsityCurves before the first pruning


class TrialAttr:
    """Optuna user attributes of sweep studies and trials (not MLflow; listed so names live in one place)."""

    KIND: Final = "bench.kind"  # study: the sweep kind
    MLFLOW_PARENT: Final = "bench.mlflow_parent"  # study: the sweep's MLflow parent run id
    SLOT: Final = "bench.slot"
    CELL: Final = "bench.cell"
    SURPLUS: Final = "bench.surplus"
    WORKER: Final = "bench.worker"  # "host:pid"
    ERROR: Final = "bench.error"
    CONFIG: Final = "bench.config"  # the trial's resolved config


# --- the result of one (method, seed) ------------------------------------------------------------

ROW_HEAD: Final = (  # the first keys of a result row, in order; then latency_*, train_epochs, run_id
    "method",
    "seed",
    Metric.TEST_ACC,
    Metric.BEST_VAL_ACC,
    Metric.PARAMS,
    Metric.MACS,
    Metric.DENSE_TEST_ACC,
    Metric.DENSE_PARAMS,
    Metric.DENSE_MACS,
    Metric.ACC_CHANGE,
    Metric.PARAMS_REDUCTION,
    Metric.FLOPS_REDUCTION,
)
RESULT_METRICS: Final = (*ROW_HEAD[2:], Metric.CHANNELS_REMOVED)  # measured, besides LATENCY_MEASURED
LATENCY_MEASURED: Final = (Metric.LATENCY_MEDIAN, Metric.LATENCY_IQR)  # the rest of latency_* is its protocol
RESULT_PARAMS: Final = (Param.SEED, Param.TRAIN_EPOCHS, Param.TRAIN_IMAGES)  # settings, besides budget/*
_DERIVED = frozenset({Metric.ACC_CHANGE, Metric.PARAMS_REDUCTION, Metric.FLOPS_REDUCTION})


@dataclass(frozen=True)
class Result:
    """One (method or dense, seed): accuracies are fractions in [0, 1], costs are counts per image.

    ``latency`` holds ``Latency.as_dict()`` (median_ms, iqr_ms and the protocol) without the
    ``latency_`` prefix the row adds; empty when latency was not measured.
    """

    method: str
    seed: int
    test_acc: float
    best_val_acc: float
    params: int
    macs: int
    dense_test_acc: float
    dense_params: int
    dense_macs: int
    train_epochs: int | None = None  # the training budget (``bench.budget``)
    train_images: int | None = None
    budget: Mapping[str, float] = field(default_factory=dict)  # ``budget/<phase>_epochs|images``
    channels_removed: float | None = None  # achieved fraction of the dense prunable channels removed
    latency: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def acc_change(self) -> float:
        return self.test_acc - self.dense_test_acc

    @property
    def params_reduction(self) -> float:
        return 1 - self.params / self.dense_params

    @property
    def flops_reduction(self) -> float:
        return 1 - self.macs / self.dense_macs

    def to_row(self) -> dict[str, Any]:
        """The flat row of the results table and of ``result.json`` (keys in ``ROW_HEAD`` order)."""
        row = {key: getattr(self, key) for key in ROW_HEAD}
        row.update({f"{Metric.LATENCY_PREFIX}{k}": v for k, v in self.latency.items()})
        for key in (Metric.TRAIN_EPOCHS, Metric.TRAIN_IMAGES, Metric.CHANNELS_REMOVED):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        row.update(self.budget)
        if self.run_id is not None:
            row["run_id"] = self.run_id
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Result:
        """The inverse of ``to_row``; derived fields (acc_change, reductions) are recomputed, not read."""
        prefix = Metric.LATENCY_PREFIX
        latency = {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}
        budget = {k: v for k, v in row.items() if k.startswith(BUDGET_PREFIX)}
        known = {k: v for k, v in row.items() if k in _FIELDS}
        return cls(**known, latency=latency, budget=budget)

    def metrics(self) -> dict[str, float]:
        """The measurements, as MLflow metrics: accuracies, params, MACs, reductions, channels
        removed, latency median and IQR (never a setting: ``settings``, ``tags``)."""
        return {k: float(v) for k, v in self._fields("metric").items()}

    def settings(self) -> dict[str, str]:
        """The settings, as MLflow params: the seed and the training budget (``train_epochs``,
        ``train_images``, ``budget/*``), whole numbers written without a fraction ("4", not "4.0")."""
        return {k: _param_text(v) for k, v in self._fields("param").items()}

    def tags(self) -> dict[str, str]:
        """The text fields and the latency protocol as ``bench.<field>`` tags: the method, the latency
        device, timer, dtype, batch size, repeats, ..."""
        return {result_tag(k): str(v) for k, v in self._fields("tag").items()}

    def _fields(self, kind: str) -> dict[str, Any]:
        row = self.to_row()
        row.pop("run_id", None)
        return {k: v for k, v in row.items() if stored_as(k, v) == kind}


_FIELDS = frozenset(ROW_HEAD) - _DERIVED | {Metric.TRAIN_EPOCHS, Metric.TRAIN_IMAGES, Metric.CHANNELS_REMOVED, "run_id"}


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _param_text(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def stored_as(key: str, value: Any = 0) -> str:
    """Where a result field is stored: "param" (settings), "tag" (the latency protocol, text) or
    "metric" (measurements); ``value`` tells a text field from a number."""
    if key in RESULT_PARAMS or key.startswith(BUDGET_PREFIX):
        return "param"
    if key.startswith(Metric.LATENCY_PREFIX) and key not in LATENCY_MEASURED:
        return "tag"
    return "metric" if _numeric(value) else "tag"


def stored_number(data: Any, key: str) -> float | None:
    """A numeric result field of a stored run (``data``: MLflow's ``run.data``, with ``tags``,
    ``params``, ``metrics``), where this version stores it, else where a version before issue 14
    did (a metric); None when the run has neither or its text is not a number."""
    kind = stored_as(key)
    text = data.params.get(key) if kind == "param" else data.tags.get(result_tag(key)) if kind == "tag" else None
    number = _to_float(text)
    return number if number is not None else data.metrics.get(key)


def _to_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
