"""One method, one seed: a :class:`MethodRun` owns the model, the method's context, the work dir, the
MLflow run and the epoch history, and walks the pipeline of DESIGN.md::

    setup -> [sparsity training -> importance -> allocation -> surgery -> (fine-tune)]* -> fine-tune
    -> measure -> finish (plans, weights and the result into the work dir and MLflow)

A method that inherits its architecture (``Method.plan_source``, the scratch control) replaces the
rounds and the fine-tuning by: replay the source's plans -> (re-initialise) -> train -> measure.

Every phase resumes from its epoch checkpoint, every completed round from ``r<k>-done.pt``, and a
finished (method, seed) from ``result.json``: a killed invocation run again continues here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from bench import inherit, measure, models, registry, surgery
from bench.api import Context, Inherited, Method
from bench.atomic import atomic_write_text
from bench.baseline import Baseline
from bench.checkpoint import atomic_save, load
from bench.config import Schedule
from bench.estimate import inherited_schedule, pipeline_epochs
from bench.plan import PruningPlan, load_plans, save_plans
from bench.pruning import default_plan, inherited_model
from bench.run_log import latency_of, log_finished, log_sparsity
from bench.schema import DENSE, Artifact, Param, Result, Tag, compile_tag, epoch_metric
from bench.session import EarlyStop, Session
from bench.training import FitResult, eval_loader, evaluate_splits, fit, seed_everything

PHASE_LABELS = {"sparsity": "sparsity", "finetune": "fine-tune", "train": "train"}


class MethodRun:
    """The pipeline of ``name`` for one seed, from the dense ``baseline`` (or a fresh init).

    ``label`` names its MLflow run and work dir (default: the method name; a sweep uses the trial).
    """

    def __init__(self, session: Session, name: str, seed: int, baseline: Baseline, label: str | None = None):
        self.session, self.name, self.seed, self.baseline = session, name, seed, baseline
        self.label = label or name
        self.method: Method = registry.get_method(name).from_params(session.cfg.method_params(name))
        self.workdir = session.paths.runs / session.parent_id / f"{self.label}-s{seed}"
        self.history: list[dict[str, Any]] = []
        self.run_id = ""
        self.model: nn.Module | None = None
        self.ctx: Context | None = None

    # --- the whole run --------------------------------------------------------------------------

    def execute(self, tags: Mapping[str, str] | None = None) -> Result:
        """Run (or resume) the pipeline; a finished one is read back from its work dir."""
        done = self.workdir / "result.json"
        if done.exists():
            self.session.say(f"{self.label} seed {self.seed}: already finished in this run, skipping")
            return Result.from_row(json.loads(done.read_text()))
        self.run_id = self._start_run(tags or {})
        with self._ended_on_failure():
            source = self.method.plan_source(self.session.cfg.methods)
            result = self._pruned() if source is None else self._inherited(source)
        atomic_write_text(json.dumps(result.to_row(), indent=1), done)
        return result

    def _start_run(self, tags: Mapping[str, str]) -> str:
        return self.session.tracker.start_run(
            f"{self.label} seed {self.seed}",
            parent_id=self.session.parent_id,
            key=f"{self.session.parent_id}/{self.label}/s{self.seed}",
            tags={Tag.METHOD: self.name, Tag.SEED: str(self.seed), **tags},
        )

    @contextmanager
    def _ended_on_failure(self) -> Iterator[None]:
        """A kill, an early stop or a failure: say so in MLflow, then re-raise."""
        try:
            yield
        except BaseException as exc:
            stopped = isinstance(exc, KeyboardInterrupt | EarlyStop)
            self.session.tracker.set_tags(self.run_id, {Tag.STOPPED if stopped else Tag.ERROR: repr(exc)[:500]})
            self.session.tracker.end_run(self.run_id, "KILLED" if stopped else "FAILED")
            raise

    def _pruned(self) -> Result:
        """setup -> prune rounds -> fine-tune -> measure -> finish."""
        self._setup(self._fresh_model())
        plans = self.prune_rounds()
        final = self.fit("finetune", self.session.cfg.finetune_schedule(self.name))
        epochs = pipeline_epochs(self.session.cfg, self.name, self.method, len(plans))
        return self.finish(self.measure(final, epochs), plans)

    def _inherited(self, source: str) -> Result:
        """Replay the source's plans, re-initialise (start="scratch"), train once, measure, finish."""
        cfg, data = self.session.cfg, self.session.data
        planned = inherit.inherited(self.session, source, self.seed)
        seed_everything(self.seed, cfg.deterministic)
        scratch = self.method.start == "scratch"
        model = inherited_model(
            cfg.model,
            data.num_classes,
            data.input_size,
            planned.plans,
            fresh_init_seed=self.seed if scratch else None,
            dense_state=None if scratch else self.baseline.state,
        )
        schedule = self._setup(model, planned)
        final = self.fit("train", schedule)
        return self.finish(self.measure(final, schedule.epochs), list(planned.plans))

    # --- steps ----------------------------------------------------------------------------------

    def _fresh_model(self) -> nn.Module:
        cfg, data = self.session.cfg, self.session.data
        seed_everything(self.seed, cfg.deterministic)
        model = models.create(cfg.model, data.num_classes, data.input_size)
        if self.method.start == "dense":
            model.load_state_dict(self.baseline.state)
        return model

    def _setup(self, model: nn.Module, planned: Inherited | None = None) -> Schedule | None:
        """Context, ``method.setup`` and the method's params in MLflow; an inherited architecture
        also records its source and returns its training schedule."""
        self.model, self.ctx = model, self._context(model)
        self.method.setup(model, self.ctx)
        params = _method_params(self.session, self.name, self.method)
        schedule = None
        if planned is not None:
            schedule = inherited_schedule(self.session.cfg, self.name, self.method, planned)
            params[Param.TRAIN_SCHEDULE] = asdict(schedule)
            tags = {Tag.PLAN_SOURCE: planned.source, Tag.PLAN_SOURCE_RUN: planned.run_id or ""}
            self.session.tracker.set_tags(self.run_id, tags)
        self.session.tracker.log_params(self.run_id, params)
        return schedule

    def _context(self, model: nn.Module) -> Context:
        session = self.session
        return Context(
            session.cfg.model,
            surgery.prunable_units(model, session.data.input_size),
            session.runtime.device,
            self.seed,
            torch.Generator().manual_seed(self.seed),
            session.data,
            session.data.input_size,
            prune=session.cfg.prune,
        )

    def prune_rounds(self) -> list[PruningPlan]:
        """Sparsity training, importance, allocation and surgery, for each round; resumable per round."""
        plans = self._restore_rounds()
        rounds = self.method.rounds(self.ctx)
        self.ctx.rounds = rounds
        for r in range(len(plans), rounds):
            self.ctx.round = r
            if self.method.sparsity_training:
                self.fit("sparsity", self.session.cfg.sparsity_schedule(self.name), r)
            if r == 0:  # the trained (or sparsity-trained) model, before any channel goes
                log_sparsity(self.session, self.run_id, self.model)
            plans.append(self.prune_once())
            if r < rounds - 1:
                self.fit("finetune", self.session.cfg.finetune_schedule(self.name), r)
            state = {"model": self.model.state_dict(), "method": self.method.state_dict()}
            atomic_save(state, self.workdir / f"r{r}-done.pt")
            save_plans(plans, self.workdir / Artifact.PLANS)  # written last: marks round r complete
        return plans

    def _restore_rounds(self) -> list[PruningPlan]:
        """Replay the rounds a killed invocation completed (plans + weights after each round)."""
        if not (self.workdir / Artifact.PLANS).exists():
            return []
        plans = load_plans(self.workdir / Artifact.PLANS)
        input_size = self.session.data.input_size
        for plan in plans:
            surgery.apply(self.model, plan, input_size)
        saved = load(self.workdir / f"r{len(plans) - 1}-done.pt")
        self.model.load_state_dict(saved["model"])
        self.method.load_state_dict(saved["method"])
        self.ctx.units = surgery.prunable_units(self.model, input_size)
        self.session.say(f"resuming after {len(plans)} completed prune round(s) from {self.workdir}")
        return plans

    def prune_once(self) -> PruningPlan:
        """Importance -> allocation (the method's, else the run's rule) -> surgery, on this round."""
        ctx, model, cfg = self.ctx, self.model, self.session.cfg
        ctx.phase = "prune"
        model.eval()
        scores = self.method.importance(model, ctx)
        plan = self.method.allocate(model, scores, ctx)
        if plan is None:
            plan = default_plan(
                cfg.prune,
                cfg.model,
                model,
                ctx.units,
                scores,
                backend=surgery.backend_of(model),
                input_size=ctx.input_size,
                round_index=ctx.round,
                rounds=ctx.rounds,
                original_macs=self.baseline.result.macs,  # the unpruned count: base of cumulative targets
            )
        surgery.apply(model, plan, ctx.input_size)
        ctx.units = surgery.prunable_units(model, ctx.input_size)
        return plan

    def fit(self, phase: str, schedule: Schedule, round_index: int | None = None) -> FitResult:
        """Train the model for one phase ("sparsity", "finetune" or "train"), logging each epoch.

        ``round_index`` marks a phase inside a prune round (its checkpoint and progress label say so).
        """
        ctx = self.ctx
        ctx.phase, ctx.step = phase, 0
        tag = "" if round_index is None else f"r{round_index}"
        hooks = self.method if phase == "sparsity" or self.method.finetune_hooks else None
        result = fit(
            self.model,
            self.session.data,
            schedule,
            self.session.runtime,
            seed=self.seed,
            method=hooks,
            ctx=ctx,
            checkpoint=self.workdir / f"{tag}{'-' if tag else ''}{phase}.ckpt",
            desc=f"{self.name} {PHASE_LABELS[phase]}{' ' + tag if tag else ''} s{self.seed}",
            on_epoch=self._epoch_logger(phase),
        )
        if self.session.runtime.compile:
            self.session.tracker.set_tags(self.run_id, {compile_tag(phase): result.compile_status})
        return result if schedule.epochs > 0 else self._evaluated()

    def _epoch_logger(self, phase: str):
        """Each epoch's stats into the history and MLflow (step = epochs so far in this run)."""
        offset, session = len(self.history), self.session

        def log_epoch(epoch: int, stats: dict[str, float]) -> None:
            self.history.append({"phase": phase, **stats})
            stats_metrics = {epoch_metric(phase, k): v for k, v in stats.items()}
            session.tracker.log_metrics(self.run_id, stats_metrics, offset + epoch)
            if session.on_epoch is not None:
                session.on_epoch(phase, epoch, stats)

        return log_epoch

    def _evaluated(self) -> FitResult:
        """A phase of zero epochs trained nothing: evaluate the model as it stands."""
        data, runtime = self.session.data, self.session.runtime
        val, test = eval_loader(data.val, data, runtime), eval_loader(data.test, data, runtime)
        stats = evaluate_splits(self.model, val, test, runtime)
        return FitResult(-1, stats["val_acc"], stats["test_acc"], stats["val_acc"])

    def measure(self, final: FitResult, train_epochs: int) -> Result:
        """Accuracy of the selected checkpoint, params and MACs (on CPU), and latency when asked."""
        cost = measure.cost(self.model.cpu(), self.session.data.input_size)
        self.model.to(self.session.runtime.device)
        dense = self.baseline.result
        return Result(
            method=self.name,
            seed=self.seed,
            test_acc=final.test_acc,
            best_val_acc=final.best_val_acc,
            params=cost.params,
            macs=cost.macs,
            dense_test_acc=dense.test_acc,
            dense_params=dense.params,
            dense_macs=dense.macs,
            train_epochs=train_epochs,
            latency=latency_of(self.session, self.model),
        )

    def finish(self, result: Result, plans: list[PruningPlan]) -> Result:
        """The final plans and weights into the work dir, then the finished run into MLflow."""
        plans_file, model_file = self.workdir / Artifact.PLANS, self.workdir / Artifact.MODEL
        save_plans(plans, plans_file)
        atomic_save(self.model.state_dict(), model_file)
        log_finished(self.session, self.run_id, result, {}, [plans_file, model_file])
        return replace(result, run_id=self.run_id)


def _method_params(session: Session, name: str, method: Method) -> dict[str, Any]:
    """What a method run records as MLflow params: its config, sparsity and fine-tune schedules, rule."""
    cfg = session.cfg.to_dict()
    return {
        Param.METHOD: name,
        Param.METHOD_CONFIG: method.config_dict(),
        Param.SPARSITY: cfg["sparsity"] or DENSE,
        Param.FINETUNE_SCHEDULE: asdict(session.cfg.finetune_schedule(name)),
        Param.PRUNE: cfg["prune"],
    }
