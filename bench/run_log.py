"""What a finished method or dense run writes to MLflow: its result record (measurements as metrics,
settings as params, the latency protocol and text fields as tags: ``Result.metrics``, ``settings``,
``tags``), the tags a report groups by, the model's stem adaptation, the environment, the resolved
config, sparsity curves and its artifacts.

Every name written here is declared in ``bench.schema``; reports read them back through
``bench.store`` and never recompute.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from bench import export, measure, protocol, provenance, sparsity
from bench.schema import DENSE, Artifact, Param, Phase, Result, Tag, epoch_metric
from bench.session import Session


def latency_of(session: Session, model: nn.Module) -> dict[str, Any]:
    """Median, IQR and protocol of the model's latency when the config asks for it, else empty."""
    if not session.cfg.latency:
        return {}
    lat = measure.measure_latency(
        model, session.data.input_size, session.cfg.latency_batch_size, session.runtime.device
    )
    return lat.as_dict()


def log_sparsity(session: Session, run_id: str, model: nn.Module) -> None:
    """What the trained model tells before any channel goes: unstructured and structured sparsity
    curves (an artifact, plus metrics at fixed eps) and its ``model_tags``."""
    curves = sparsity.sparsity_curves(model)
    session.tracker.log_dict(run_id, curves.as_dict(), sparsity.ARTIFACT)
    session.tracker.log_metrics(run_id, curves.metrics(), step=None)
    session.tracker.set_tags(run_id, model_tags(model))


def model_tags(model: nn.Module) -> dict[str, str]:
    """How the model was built for this input size: ``bench.stem_adaptation`` (what
    ``bench.models.timm_models`` did to a timm stem for 32/64 px; "none" for other models)."""
    return {Tag.STEM_ADAPTATION: str(getattr(model, "bench_stem_adaptation", "none"))}


def identity_tags(session: Session, method: str) -> dict[str, str]:
    """What a report groups by, on every run (not only the parent): model, data, pruning rule."""
    cfg, data = session.cfg, session.data
    tags = {Tag.MODEL: cfg.model, Tag.DATASET: data.name, Tag.DATA_LABEL: data.label}
    tags.update({Tag.NUM_CLASSES: str(data.num_classes), Tag.INPUT_SIZE: str(data.input_size)})
    if method != DENSE:
        rule = cfg.prune.rule
        tags.update({Tag.PRUNE_RULE: rule, Tag.PRUNE_VALUE: str(getattr(cfg.prune, rule))})
    return tags


def log_protocol(session: Session, run_id: str, settings: Mapping[str, Any]) -> str:
    """The protocol's digest as ``bench.protocol`` and its settings as ``protocol.*`` params; returns
    the digest."""
    digest = protocol.digest(dict(settings))
    session.tracker.set_tags(run_id, {Tag.PROTOCOL: digest})
    session.tracker.log_params(run_id, {Param.PROTOCOL_PREFIX.rstrip("."): settings})
    return digest


def log_history(session: Session, run_id: str, history: list[dict[str, float]]) -> None:
    """The dense baseline's per-epoch statistics (a method's epochs are logged as they happen)."""
    for step, stats in enumerate(history):
        numeric = {epoch_metric(Phase.DENSE, k): v for k, v in stats.items() if isinstance(v, int | float)}
        session.tracker.log_metrics(run_id, numeric, step)


def log_model(session: Session, run_id: str, model: nn.Module) -> None:
    """The trained model as an MLflow model (``runs:/<id>/model``, loadable without bench); a model
    that cannot be exported keeps its run, with the reason as the tag ``bench.mlflow_model_error``."""
    example = export.example_input(session.data.input_size)
    reason = export.log_mlflow_model(model, run_id, example, session.tracker.client)
    if reason is not None:
        session.tracker.set_tags(run_id, {Tag.MLFLOW_MODEL_ERROR: reason})


def log_finished(session: Session, run_id: str, result: Result, tags: Mapping[str, str], artifacts: list[Path]) -> None:
    """The result's measurements as metrics, its settings as params, its latency protocol, text
    fields and identity as tags, then FINISHED."""
    tracker = session.tracker
    if result.method == DENSE:  # a method run logged its protocol when it started
        log_protocol(session, run_id, protocol.dense_protocol(session.cfg, session.runtime.device.type))
    tracker.log_metrics(run_id, result.metrics(), step=None)
    tracker.log_params(run_id, result.settings())
    identity = identity_tags(session, result.method)
    tracker.set_tags(run_id, {**identity, **tags, **result.tags(), **provenance.environment()})
    tracker.log_dict(run_id, session.cfg.to_dict(), Artifact.CONFIG)
    for path in artifacts:
        tracker.log_artifact(run_id, path)
    tracker.end_run(run_id, "FINISHED")
