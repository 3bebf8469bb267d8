"""``bench run``: the pipeline of DESIGN.md, one function per box of the data flow.

    config -> data -> dense baseline (trained or reused from the cache) -> per method and seed:
    setup -> [sparsity training -> importance -> allocation -> surgery]* -> fine-tune -> measure
    -> MLflow (parent run per invocation, nested run per method and seed) -> comparison table

A method that inherits its architecture (``Method.plan_source``, the scratch control) replaces the
rounds and the fine-tuning by: replay the source's plans -> re-initialise -> train -> measure.

A killed invocation resumes: the parent MLflow run is found by the config hash, each phase resumes
from its last epoch checkpoint, and finished (method, seed) pairs are not run again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from bench import datasets, measure, models, provenance, registry, sparsity, surgery
from bench.api import Context, Inherited, Method
from bench.checkpoint import atomic_save, atomic_write_text, load
from bench.config import RunConfig, Schedule, stable_hash
from bench.errors import BenchError
from bench.paths import Paths, exclusive_lock, prepare_results_dir
from bench.plan import PruningPlan, load_plans, save_plans
from bench.pruning import default_plan, inherited_model
from bench.tracking import Tracker, resolve_tracking_uri
from bench.training import (
    FitResult,
    Runtime,
    eval_loader,
    evaluate_splits,
    fit,
    resolve_device,
    seconds_per_image,
    seed_everything,
)
from reports.reference import published_for
from reports.tables import build_tables, comparison_table, format_table

EVAL_COST = 0.45  # an eval image costs this fraction of a training image (measured: resnet20, 2-core CPU)

EpochCallback = Callable[[str, int, dict[str, float]], None]  # (phase, epoch, stats) after each epoch


class EarlyStop(Exception):
    """Raised from an epoch callback to end a method run early on purpose (a pruned sweep trial):
    its MLflow run ends KILLED with the reason, not FAILED."""


@dataclass
class Session:
    """What every step of one invocation shares."""

    cfg: RunConfig
    paths: Paths
    data: datasets.DatasetSplits
    runtime: Runtime
    tracker: Tracker
    parent_id: str
    say: Any = print
    external: dict[str, Inherited] = field(default_factory=dict)  # "run:<id>" plan sources, read once
    on_epoch: EpochCallback | None = None  # e.g. a sweep trial's intermediate reports


def load_data(cfg: RunConfig, paths: Paths) -> datasets.DatasetSplits:
    d = cfg.data
    return datasets.build(
        d.name,
        d.root,
        cache_dir=paths.data_cache,
        val_size=d.val_size,
        split_seed=d.split_seed,
        train_limit=d.train_limit,
        test_limit=d.test_limit,
        download=d.download,
    )


def run(cfg: RunConfig, *, progress: bool = True, say: Any = print) -> pd.DataFrame:
    """Run every method over every seed; returns one row per (method or dense, seed)."""
    models.validate_name(cfg.model)
    method_classes = {name: registry.get_method(name) for name in cfg.methods}
    # bad hyperparameters and plan sources fail now, not after the baseline
    methods = {name: cls.from_params(cfg.method_params(name)) for name, cls in method_classes.items()}
    sources = plan_sources(cfg, methods)
    method_classes = {name: method_classes[name] for name in run_order(cfg.methods, sources)}
    paths, data, runtime, tracker = prepare(cfg, progress)
    external = {s: inherited_from_run(tracker, s, cfg.model) for s in sources.values() if s.startswith(RUN_SOURCE)}
    say(describe_plan(cfg, data, runtime, {n: methods[n] for n in method_classes}, external))
    parent_id = _start_parent(cfg, tracker, data)
    session = Session(cfg, paths, data, runtime, tracker, parent_id, say, external)
    try:
        rows = []
        for seed in cfg.seeds:
            dense_state, dense_row = dense_baseline(session, seed)
            rows.append(dense_row)
            rows += [
                run_method(session, name, cls, seed, dense_state, dense_row) for name, cls in method_classes.items()
            ]
        results = pd.DataFrame(rows)
        _finish_parent(session, results)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        tracker.set_tags(parent_id, {"bench.error": repr(exc)[:500]})
        tracker.end_run(parent_id, status)
        raise
    return results


def prepare(
    cfg: RunConfig, progress: bool = True, tracker: Tracker | None = None
) -> tuple[Paths, datasets.DatasetSplits, Runtime, Tracker]:
    """The results dir, the data, the runtime and the tracking store that a run works with."""
    paths = prepare_results_dir(cfg.results_dir)
    data = load_data(cfg, paths)
    runtime = Runtime(
        resolve_device(cfg.device),
        cfg.amp,
        cfg.channels_last,
        cfg.eval_batch_size,
        cfg.data.augment,
        progress,
        compile=cfg.compile,
        compile_backend=cfg.compile_backend,
    )
    tracker = tracker or Tracker(resolve_tracking_uri(cfg.tracking_uri, paths.root), cfg.experiment)
    return paths, data, runtime, tracker


def _start_parent(cfg: RunConfig, tracker: Tracker, data: datasets.DatasetSplits) -> str:
    name = f"{cfg.model} {cfg.data.name} {','.join(cfg.methods) or 'dense'}"
    tags = {
        "bench.kind": "run",
        "bench.config_hash": cfg.digest(),
        "bench.model": cfg.model,
        "bench.dataset": cfg.data.name,
        "bench.data_source": data.source,
        "bench.data_label": data.label,
    }
    parent_id = tracker.start_run(name, parent_id=None, key=f"run/{cfg.digest()}", tags=tags)
    tracker.log_params(parent_id, cfg.to_dict())
    tracker.set_tags(parent_id, provenance.environment())
    tracker.log_dict(parent_id, cfg.to_dict(), "config.json")
    return parent_id


def _finish_parent(session: Session, results: pd.DataFrame) -> None:
    table = comparison_table(results)
    cfg = session.cfg
    reference = published_for(cfg.model, session.data.name) if cfg.published else None
    shown = build_tables(results, group_by=(), reference=reference)[0]
    session.say("\n" + format_table(shown.frame(), title=_table_title(session)))
    for note in shown.footnotes:
        session.say(f"- {note}")
    session.tracker.log_table(session.parent_id, results, "results.json")
    session.tracker.log_table(session.parent_id, table, "comparison_table.json")
    session.tracker.end_run(session.parent_id, "FINISHED")
    session.say(
        f"\nMLflow: parent run {session.parent_id} in experiment '{session.cfg.experiment}' at {session.tracker.uri}"
    )


def _table_title(session: Session) -> str:
    cfg, data = session.cfg, session.data
    return (
        f"{cfg.model} on {data.label} ({data.source}); test accuracy of the best-validation checkpoint, "
        f"mean +- std over {len(cfg.seeds)} seed(s); FLOPs are {measure.FLOP_CONVENTION}"
    )


# --- planning ------------------------------------------------------------------------------------


def describe_plan(
    cfg: RunConfig, data, runtime: Runtime, methods: dict[str, Method], external: dict[str, Inherited]
) -> str:
    """The planned work (phases, epochs, images) and an estimate from measured throughput."""
    phases = _phases(cfg, methods, external)
    train_images = sum(epochs * len(data.train) for _, epochs in phases) * len(cfg.seeds)
    eval_images = sum(epochs for _, epochs in phases) * (len(data.val) + len(data.test)) * len(cfg.seeds)
    probe = models.create(cfg.model, data.num_classes, data.input_size)
    spi = seconds_per_image(probe, data, cfg.dense.batch_size, runtime)
    estimate = spi * (train_images + eval_images * EVAL_COST)
    lines = [
        f"plan: {cfg.model} on {data.label} [{data.source}]",
        f"  images: train {len(data.train):,} / val {len(data.val):,} / test {len(data.test):,}; "
        f"seeds {','.join(map(str, cfg.seeds))}; device {runtime.device}; pruning rule {cfg.prune.rule}",
        f"  {'phase':<34}{'epochs':>7}{'train images':>14}",
    ]
    for name, epochs in phases:
        lines.append(f"  {name:<34}{epochs:>7}{epochs * len(data.train):>14,}")
    lines.append(
        f"  total per seed x {len(cfg.seeds)} seed(s): {train_images:,} training + {eval_images:,} eval "
        f"images; measured {spi * 1e3:.2f} ms per training image -> estimated {_duration(estimate)} "
        "(cached baselines are skipped)"
    )
    return "\n".join(lines)


def _phases(cfg: RunConfig, methods: dict[str, Method], external: dict[str, Inherited]) -> list[tuple[str, int]]:
    """(label, epochs per seed) of every training phase; inherited budgets use the planned sources."""
    phases = [("dense baseline (cached if present)", cfg.dense.epochs)]
    for name, method in methods.items():
        source = method.plan_source(cfg.methods)
        if source is not None:
            planned = external.get(source) or _planned_inheritance(cfg, source, methods[source])
            epochs = _inherited_schedule(cfg, name, method, planned).epochs
            phases.append((f"{name}: train ({source}'s architecture)", epochs))
            continue
        rounds = _planned_rounds(cfg, method)
        suffix = f" x {rounds} rounds" if rounds > 1 else ""
        if method.sparsity_training:
            phases.append((f"{name}: sparsity training{suffix}", cfg.sparsity_schedule(name).epochs * rounds))
        phases.append((f"{name}: fine-tune{suffix}", cfg.finetune_schedule(name).epochs * rounds))
    return phases


def _planned_rounds(cfg: RunConfig, method: Method) -> int:
    """The method's prune rounds, asked before any model exists (rounds hooks read their config)."""
    ctx = Context(cfg.model, [], torch.device("cpu"), 0, torch.Generator(), prune=cfg.prune)
    return method.rounds(ctx)


def pipeline_epochs(cfg: RunConfig, name: str, method: Method, rounds: int) -> int:
    """Every epoch that produced a method's final model: its dense baseline's (when it starts from it),
    its sparsity phases and its fine-tuning, over all rounds. The scratch control's budget."""
    per_round = cfg.finetune_schedule(name).epochs
    if method.sparsity_training:
        per_round += cfg.sparsity_schedule(name).epochs
    return (cfg.dense.epochs if method.start == "dense" else 0) + rounds * per_round


def _planned_inheritance(cfg: RunConfig, source: str, method: Method) -> Inherited:
    """What a same-run source will hand over, for the estimate: its epochs, and MACs at the target."""
    epochs = pipeline_epochs(cfg, source, method, _planned_rounds(cfg, method))
    kept = 1 - (cfg.prune.target_flops_reduction or 0.0)
    return Inherited(source, None, (), epochs, max(1, round(1e6 * kept)), 1_000_000)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- inherited architectures (the scratch control) ----------------------------------------------

RUN_SOURCE = "run:"


def plan_sources(cfg: RunConfig, methods: dict[str, Method]) -> dict[str, str]:
    """method -> its plan source, for the methods that inherit an architecture; checked here."""
    sources = {}
    for name, method in methods.items():
        source = method.plan_source(cfg.methods)
        if source is None:
            continue
        if not source.startswith(RUN_SOURCE):
            if source not in methods or source == name:
                others = [m for m in cfg.methods if m != name] or ["none"]
                raise BenchError(
                    f"{name}'s plan source '{source}' is not another method of this run (--methods: "
                    f"{', '.join(others)}); add it to --methods or use source=run:<MLflow run id>"
                )
            if methods[source].plan_source(cfg.methods) is not None:
                raise BenchError(
                    f"{name}'s plan source '{source}' inherits its own architecture; name a method that prunes"
                )
        sources[name] = source
    return sources


def run_order(methods: tuple[str, ...], sources: dict[str, str]) -> list[str]:
    """The order given, except that a method inheriting an architecture runs after every other."""
    return [m for m in methods if m not in sources] + [m for m in methods if m in sources]


def inherited_from_run(tracker: Tracker, source: str, model: str) -> Inherited:
    """The plans and budget of a finished method run of this store, checked against ``model``."""
    run_id = source[len(RUN_SOURCE) :].strip()
    run = tracker.get_run(run_id)
    if run.info.status != "FINISHED":
        raise BenchError(f"plan source run '{run_id}' is {run.info.status}, not FINISHED; name a finished method run")
    plans = tuple(PruningPlan.from_dict(d) for d in tracker.read_json(run_id, "plans.json"))
    if plans and plans[0].model != model:
        raise BenchError(f"plan source run '{run_id}' pruned {plans[0].model}, but this run's model is {model}")
    metrics = run.data.metrics
    missing = [k for k in ("train_epochs", "macs", "dense_macs") if k not in metrics]
    if missing:
        raise BenchError(
            f"plan source run '{run_id}' lacks the metrics {', '.join(missing)} (logged by bench run since "
            "the scratch control was added); re-run its method or name a newer run"
        )
    return Inherited(
        source, run_id, plans, int(metrics["train_epochs"]), int(metrics["macs"]), int(metrics["dense_macs"])
    )


def _inherited_in_run(session: Session, source: str, seed: int) -> Inherited:
    """A same-run source's plans for ``seed``, from its finished work directory."""
    folder = session.paths.runs / session.parent_id / f"{source}-s{seed}"
    row = json.loads((folder / "result.json").read_text())
    if "train_epochs" not in row:
        raise BenchError(f"{source} seed {seed} in {folder} finished before epoch budgets were recorded; re-run it")
    plans = tuple(load_plans(folder / "plans.json"))
    return Inherited(
        source, row.get("run_id"), plans, int(row["train_epochs"]), int(row["macs"]), int(row["dense_macs"])
    )


def _inherited_schedule(cfg: RunConfig, name: str, method: Method, inherited: Inherited) -> Schedule:
    """An explicit ``method.<name>.finetune`` schedule wins; otherwise the method's own choice."""
    override = cfg.method.get(name)
    if override is not None and override.finetune is not None:
        return override.finetune
    return method.inherited_schedule(cfg.dense, inherited)


def _inherited_pipeline(session, name, cls, method, source, seed, dense_state, dense_row, workdir, run_id) -> dict:
    """Replay the source's plans, re-initialise (start="scratch"), train once, measure, log."""
    cfg, data = session.cfg, session.data
    inherited = session.external.get(source) or _inherited_in_run(session, source, seed)
    seed_everything(seed, cfg.deterministic)
    model = inherited_model(
        cfg.model,
        data.num_classes,
        data.input_size,
        inherited.plans,
        fresh_init_seed=seed if cls.start == "scratch" else None,
        dense_state=dense_state if cls.start == "dense" else None,
    )
    ctx = _context(session, model, seed)
    method.setup(model, ctx)
    schedule = _inherited_schedule(cfg, name, method, inherited)
    session.tracker.log_params(run_id, {**_method_params(cfg, name, method), "train_schedule": asdict(schedule)})
    session.tracker.set_tags(run_id, {"bench.plan_source": source, "bench.plan_source_run": inherited.run_id or ""})
    ctx.phase = "train"
    hooks = method if method.finetune_hooks else None
    history: list[dict[str, float]] = []
    final = _fit_phase(
        session, name, hooks, model, ctx, schedule, workdir / "train.ckpt", f"{name} train", run_id, history
    )
    row = {**_measure(session, name, seed, model, final, dense_row), "train_epochs": schedule.epochs}
    return _save_and_log(session, run_id, row, list(inherited.plans), model, workdir)


# --- dense baseline ------------------------------------------------------------------------------


def baseline_key(cfg: RunConfig, data: datasets.DatasetSplits, runtime: Runtime, seed: int) -> str:
    """Hash of everything that determines the dense baseline."""
    return stable_hash(
        {
            "model": cfg.model,
            "num_classes": data.num_classes,
            "input_size": data.input_size,
            "data": {**cfg.to_dict()["data"], "root": None, "source": data.source},
            "schedule": cfg.to_dict()["dense"],
            "seed": seed,
            "deterministic": cfg.deterministic,
            "device": runtime.device.type,
            "amp": runtime.amp and runtime.device.type == "cuda",
            "torch": torch.__version__.split("+")[0],
        }
    )


def dense_baseline(
    session: Session, seed: int, *, log_run: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the dense model for ``seed`` or reuse it from the cache; log it as a nested run (once per
    parent) unless ``log_run`` is False. Concurrent processes sharing the results dir train it once."""
    cfg, data = session.cfg, session.data
    key = baseline_key(cfg, data, session.runtime, seed)
    folder = session.paths.baselines / key
    run_key = f"{session.parent_id}/dense/s{seed}"
    run_id = None
    if log_run and session.tracker.find_finished(run_key, parent_id=session.parent_id) is None:
        tags = {"bench.method": "dense", "bench.seed": str(seed), "bench.baseline_key": key}
        run_id = session.tracker.start_run(f"dense seed {seed}", parent_id=session.parent_id, key=run_key, tags=tags)
    with exclusive_lock(folder / ".lock"):
        reused = (folder / "meta.json").exists()
        if reused:
            session.say(f"dense baseline seed {seed}: reusing cached baseline {key} from {folder}")
        else:
            _train_baseline(session, seed, folder)
    meta = json.loads((folder / "meta.json").read_text())
    state = load(folder / "model.pt")
    dense_model = models.create(cfg.model, data.num_classes, data.input_size)
    dense_model.load_state_dict(state)
    latency = _latency(session, dense_model)  # measured on this machine every time, never cached
    row = _row("dense", seed, meta["test_acc"], meta["best_val_acc"], meta["params"], meta["macs"], meta, latency)
    row["train_epochs"] = len(meta["history"])
    if run_id is not None:
        _log_sparsity(session, run_id, dense_model)
        reused_tag = {"bench.baseline_reused": str(reused).lower()}
        _log_finished(session, run_id, row, meta["history"], reused_tag, artifacts=[folder / "model.pt"])
    return state, row


def _train_baseline(session: Session, seed: int, folder: Path) -> None:
    cfg, data = session.cfg, session.data
    session.say(f"dense baseline seed {seed}: training {cfg.dense.epochs} epochs -> {folder}")
    seed_everything(seed, cfg.deterministic)
    model = models.create(cfg.model, data.num_classes, data.input_size)
    result = fit(
        model, data, cfg.dense, session.runtime, seed=seed, checkpoint=folder / "train.ckpt", desc=f"dense s{seed}"
    )
    cost = measure.cost(model.cpu(), data.input_size)
    atomic_save(model.state_dict(), folder / "model.pt")
    meta = {
        "test_acc": result.test_acc,
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "params": cost.params,
        "macs": cost.macs,
        "seconds": result.seconds,
        "history": result.history,
        "data_source": data.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(json.dumps(meta, indent=1), folder / "meta.json")  # written last: marks the cache complete
    (folder / "train.ckpt").unlink(missing_ok=True)


# --- one method, one seed ------------------------------------------------------------------------


def run_method(
    session: Session,
    name: str,
    cls: type[Method],
    seed: int,
    dense_state: dict,
    dense_row: dict[str, Any],
    *,
    label: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The method's whole pipeline for one seed, resumable phase by phase.

    ``label`` names its MLflow run and work dir (default: the method name; a sweep uses the trial).
    """
    label = label or name
    workdir = session.paths.runs / session.parent_id / f"{label}-s{seed}"
    done = workdir / "result.json"
    if done.exists():
        session.say(f"{label} seed {seed}: already finished in this run, skipping")
        return json.loads(done.read_text())
    run_id = session.tracker.start_run(
        f"{label} seed {seed}",
        parent_id=session.parent_id,
        key=f"{session.parent_id}/{label}/s{seed}",
        tags={"bench.method": name, "bench.seed": str(seed), **(tags or {})},
    )
    try:
        method = cls.from_params(session.cfg.method_params(name))
        source = method.plan_source(session.cfg.methods)
        if source is None:
            row = _method_pipeline(session, name, cls, method, seed, dense_state, dense_row, workdir, run_id)
        else:
            args = (session, name, cls, method, source, seed, dense_state, dense_row, workdir, run_id)
            row = _inherited_pipeline(*args)
    except BaseException as exc:  # a kill, an early stop or a failure: say so in MLflow, then re-raise
        stopped = isinstance(exc, KeyboardInterrupt | EarlyStop)
        session.tracker.set_tags(run_id, {"bench.stopped" if stopped else "bench.error": repr(exc)[:500]})
        session.tracker.end_run(run_id, "KILLED" if stopped else "FAILED")
        raise
    atomic_write_text(json.dumps(row, indent=1), done)
    return row


def _method_pipeline(session, name, cls, method, seed, dense_state, dense_row, workdir, run_id) -> dict[str, Any]:
    """setup -> prune rounds -> fine-tune -> measure -> log; each phase resumes from its checkpoint."""
    cfg, data = session.cfg, session.data
    seed_everything(seed, cfg.deterministic)
    model = models.create(cfg.model, data.num_classes, data.input_size)
    if cls.start == "dense":
        model.load_state_dict(dense_state)
    ctx = _context(session, model, seed)
    method.setup(model, ctx)
    session.tracker.log_params(run_id, _method_params(cfg, name, method))
    history: list[dict[str, float]] = []
    plans = _prune_rounds(session, name, method, model, ctx, workdir, run_id, history, dense_row["macs"])
    final = _finetune(session, name, method, model, ctx, workdir, run_id, history)
    row = _measure(session, name, seed, model, final, dense_row)
    row["train_epochs"] = pipeline_epochs(cfg, name, method, len(plans))
    return _save_and_log(session, run_id, row, plans, model, workdir)


def _save_and_log(session, run_id, row, plans, model, workdir) -> dict[str, Any]:
    """The final plans and weights into the work dir, then the finished run into MLflow."""
    save_plans(plans, workdir / "plans.json")
    atomic_save(model.state_dict(), workdir / "model.pt")
    _log_finished(session, run_id, row, [], {}, artifacts=[workdir / "plans.json", workdir / "model.pt"])
    return {**row, "run_id": run_id}


def _context(session: Session, model: nn.Module, seed: int) -> Context:
    generator = torch.Generator().manual_seed(seed)
    return Context(
        session.cfg.model,
        surgery.prunable_units(model, session.data.input_size),
        session.runtime.device,
        seed,
        generator,
        session.data,
        session.data.input_size,
        prune=session.cfg.prune,
    )


def _method_params(cfg: RunConfig, name: str, method: Method) -> dict[str, Any]:
    return {
        "method": name,
        "method_config": method.config_dict(),
        "sparsity": cfg.to_dict()["sparsity"] or "dense",
        "finetune_schedule": asdict(cfg.finetune_schedule(name)),
        "prune": cfg.to_dict()["prune"],
    }


def _prune_rounds(session, name, method, model, ctx, workdir, run_id, history, original_macs) -> list[PruningPlan]:
    """Sparsity training, importance, allocation and surgery, for each round; resumable per round.

    ``original_macs`` is the unpruned model's count (the dense row's), the base of cumulative targets.
    """
    plans = _restore_rounds(session, method, model, ctx, workdir)
    rounds = method.rounds(ctx)
    ctx.rounds = rounds
    for r in range(len(plans), rounds):
        ctx.round = r
        if method.sparsity_training:
            ctx.phase = "sparsity"
            _fit_phase(
                session,
                name,
                method,
                model,
                ctx,
                session.cfg.sparsity_schedule(name),
                workdir / f"r{r}-sparsity.ckpt",
                f"{name} sparsity r{r}",
                run_id,
                history,
            )
        if r == 0:  # the trained (or sparsity-trained) model, before any channel goes
            _log_sparsity(session, run_id, model)
        plan = _prune_once(session, method, model, ctx, r, rounds, original_macs)
        plans.append(plan)
        if r < rounds - 1:
            ctx.phase = "finetune"
            _fit_phase(
                session,
                name,
                method if method.finetune_hooks else None,
                model,
                ctx,
                session.cfg.finetune_schedule(name),
                workdir / f"r{r}-finetune.ckpt",
                f"{name} fine-tune r{r}",
                run_id,
                history,
            )
        atomic_save({"model": model.state_dict(), "method": method.state_dict()}, workdir / f"r{r}-done.pt")
        save_plans(plans, workdir / "plans.json")  # written last: marks round r complete
    return plans


def _restore_rounds(
    session: Session, method: Method, model: nn.Module, ctx: Context, workdir: Path
) -> list[PruningPlan]:
    """Replay the rounds a killed invocation completed (plans + weights after each round)."""
    if not (workdir / "plans.json").exists():
        return []
    plans = load_plans(workdir / "plans.json")
    for plan in plans:
        surgery.apply(model, plan, session.data.input_size)
    saved = load(workdir / f"r{len(plans) - 1}-done.pt")
    model.load_state_dict(saved["model"])
    method.load_state_dict(saved["method"])
    ctx.units = surgery.prunable_units(model, session.data.input_size)
    session.say(f"resuming after {len(plans)} completed prune round(s) from {workdir}")
    return plans


def _prune_once(session, method, model, ctx, r, rounds, original_macs) -> PruningPlan:
    ctx.phase = "prune"
    model.eval()
    scores = method.importance(model, ctx)
    plan = method.allocate(model, scores, ctx)
    if plan is None:
        plan = default_plan(
            session.cfg.prune,
            session.cfg.model,
            model,
            ctx.units,
            scores,
            backend=surgery.backend_of(model),
            input_size=session.data.input_size,
            round_index=r,
            rounds=rounds,
            original_macs=original_macs,
        )
    surgery.apply(model, plan, session.data.input_size)
    ctx.units = surgery.prunable_units(model, session.data.input_size)
    return plan


def _finetune(session, name, method, model, ctx, workdir, run_id, history) -> FitResult:
    ctx.phase = "finetune"
    schedule = session.cfg.finetune_schedule(name)
    hooks = method if method.finetune_hooks else None
    return _fit_phase(
        session, name, hooks, model, ctx, schedule, workdir / "finetune.ckpt", f"{name} fine-tune", run_id, history
    )


def _fit_phase(session, name, method, model, ctx, schedule, checkpoint, desc, run_id, history) -> FitResult:
    phase = ctx.phase
    offset = len(history)

    def log_epoch(epoch: int, stats: dict[str, float]) -> None:
        history.append({"phase": phase, **stats})
        session.tracker.log_metrics(run_id, {f"{phase}/{k}": v for k, v in stats.items()}, step=offset + epoch)
        if session.on_epoch is not None:
            session.on_epoch(phase, epoch, stats)

    ctx.step = 0
    result = fit(
        model,
        session.data,
        schedule,
        session.runtime,
        seed=ctx.seed,
        method=method,
        ctx=ctx,
        checkpoint=checkpoint,
        desc=f"{desc} s{ctx.seed}",
        on_epoch=log_epoch,
    )
    if session.runtime.compile:
        session.tracker.set_tags(run_id, {f"bench.compile.{phase}": result.compile_status})
    if schedule.epochs == 0:  # nothing trained: evaluate the model as it stands
        stats = evaluate_splits(
            model,
            eval_loader(session.data.val, session.data, session.runtime),
            eval_loader(session.data.test, session.data, session.runtime),
            session.runtime,
        )
        result = FitResult(-1, stats["val_acc"], stats["test_acc"], stats["val_acc"])
    return result


def _measure(
    session: Session, name: str, seed: int, model: nn.Module, final: FitResult, dense: dict[str, Any]
) -> dict[str, Any]:
    cost = measure.cost(model.cpu(), session.data.input_size)
    model.to(session.runtime.device)
    return _row(name, seed, final.test_acc, final.best_val_acc, cost.params, cost.macs, dense, _latency(session, model))


def _log_sparsity(session: Session, run_id: str, model: nn.Module) -> None:
    """Unstructured and structured sparsity curves: an artifact, plus metrics at fixed eps."""
    curves = sparsity.sparsity_curves(model)
    session.tracker.log_dict(run_id, curves.as_dict(), sparsity.ARTIFACT)
    session.tracker.log_metrics(run_id, curves.metrics(), step=None)


def _latency(session: Session, model: nn.Module) -> dict[str, Any]:
    """``latency_*`` fields (median, IQR and the protocol) when the config asks for latency."""
    if not session.cfg.latency:
        return {}
    lat = measure.measure_latency(
        model, session.data.input_size, session.cfg.latency_batch_size, session.runtime.device
    )
    return {f"latency_{k}": v for k, v in lat.as_dict().items()}


def _row(
    method: str,
    seed: int,
    test_acc: float,
    val_acc: float,
    params: int,
    macs: int,
    dense: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    row = {
        "method": method,
        "seed": seed,
        "test_acc": test_acc,
        "best_val_acc": val_acc,
        "params": params,
        "macs": macs,
        "dense_test_acc": dense["test_acc"],
        "dense_params": dense["params"],
        "dense_macs": dense["macs"],
    }
    row["acc_change"] = row["test_acc"] - row["dense_test_acc"]
    row["params_reduction"] = 1 - params / row["dense_params"]
    row["flops_reduction"] = 1 - macs / row["dense_macs"]
    row.update({k: v for k, v in extra.items() if k.startswith("latency_")})
    return row


def _identity_tags(session: Session, row: dict[str, Any]) -> dict[str, str]:
    """What a report groups by, on every run (not only the parent): model, data, pruning rule."""
    cfg, data = session.cfg, session.data
    tags = {"bench.model": cfg.model, "bench.dataset": data.name, "bench.data_label": data.label}
    if row["method"] != "dense":
        rule = cfg.prune.rule
        tags.update({"bench.prune_rule": rule, "bench.prune_value": str(getattr(cfg.prune, rule))})
    return tags


def _log_finished(
    session: Session,
    run_id: str,
    row: dict[str, Any],
    history: list[dict[str, float]],
    tags: dict[str, str],
    artifacts: list[Path],
) -> None:
    tracker = session.tracker
    for step, stats in enumerate(history):
        tracker.log_metrics(run_id, {f"dense/{k}": v for k, v in stats.items() if isinstance(v, int | float)}, step)
    numeric = {k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    text = {f"bench.{k}": str(v) for k, v in row.items() if k not in numeric}  # e.g. latency device and timer
    tracker.log_metrics(run_id, numeric, step=None)
    tracker.set_tags(run_id, {**_identity_tags(session, row), **tags, **text, **provenance.environment()})
    tracker.log_dict(run_id, session.cfg.to_dict(), "config.json")
    for path in artifacts:
        tracker.log_artifact(run_id, path)
    tracker.end_run(run_id, "FINISHED")
