"""One method (or scratch row), one seed: a :class:`MethodRun` owns the model, the method's context,
the work dir, the MLflow run and the epoch history, and walks the pipeline of DESIGN.md::

    setup -> [sparsity training -> importance -> allocation -> surgery -> (fine-tune)]* -> fine-tune
    -> measure -> finish (plans, weights and the result into the work dir and MLflow)

The scratch control (``bench.controls``) runs the same pipeline: its one prune step replays its
source's plans and re-draws every weight, and its final phase ("train") uses the dense recipe for its
budget. The epochs of every phase come from ``bench.budget`` (configured, or scaled by ``--budget``).

Every phase resumes from its epoch checkpoint, every completed round from ``r<k>-done.pt``, and a
finished (method, seed) from ``result.json``: a killed invocation run again continues here. Once
``result.json`` is written (the run is FINISHED in MLflow with its plans and weights), the resume
checkpoints are deleted; ``plans.json``, ``model.pt`` and ``result.json`` stay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from bench import budget, controls, inherit, measure, models, protocol, registry, surgery
from bench.allocation import as_scores
from bench.api import Context, Method
from bench.atomic import atomic_write_text
from bench.baseline import Baseline
from bench.checkpoint import atomic_save, load, note_resume_point
from bench.config import Schedule
from bench.errors import EarlyStop
from bench.estimate import method_phases
from bench.paths import record_store, remove_resume_files
from bench.plan import PruningPlan, load_plans, save_plans
from bench.pruning import Origin, default_plan, replay
from bench.run_log import latency_of, log_finished, log_model, log_protocol, log_sparsity, model_tags
from bench.schema import DENSE, Artifact, Param, Phase, Result, Tag, compile_tag, epoch_metric
from bench.session import Session
from bench.training import FitResult, eval_loader, evaluate_splits, fit, rng_state, seed_everything, set_rng_state

PHASE_LABELS = {"sparsity": "sparsity", "finetune": "fine-tune", "train": "train"}


class MethodRun:
    """The pipeline of ``name`` (a method, or a scratch row) for one seed, from the dense
    ``baseline`` or a fresh init. ``label`` names its MLflow run and work dir (default: the name; a
    sweep uses the trial)."""

    def __init__(self, session: Session, name: str, seed: int, baseline: Baseline, label: str | None = None):
        self.session, self.name, self.seed, self.baseline = session, name, seed, baseline
        self.label = label or name
        self.control = controls.controls(session.cfg).get(name)
        self.method: Method | None = None
        if self.control is None:
            self.method = registry.get_method(name).from_params(session.cfg.method_params(name))
        self.workdir = session.paths.runs / session.parent_id / f"{self.label}-s{seed}"
        self.history: list[dict[str, Any]] = []
        self.run_id = ""
        self.model: nn.Module | None = None
        self.ctx: Context | None = None
        self.phases: budget.PhasePlan | None = None
        self.origin: Origin | None = None  # the unpruned model's widths and MACs
        self.source: inherit.Inherited | None = None  # a scratch row's architecture
        self.digest = ""

    # --- the whole run --------------------------------------------------------------------------

    def execute(self, tags: Mapping[str, str] | None = None) -> Result:
        """Run (or resume) the pipeline; a finished one is read back from its work dir."""
        done = self.workdir / "result.json"
        if done.exists():
            self.session.say(f"{self.label} seed {self.seed}: already finished in this run, skipping")
            remove_resume_files(self.workdir)  # left by an invocation killed between these two steps
            note_resume_point(f"{self.label} seed {self.seed} finished")
            return Result.from_row(json.loads(done.read_text()))
        self.run_id = self._start_run(tags or {})
        record_store(self.workdir.parent, self.session.tracker.uri)  # which store `bench clean` asks
        try:
            with self.session.tracker.ended_on_failure(self.run_id):  # KILLED or FAILED, with the reason
                result = self._pipeline()
        except EarlyStop:  # a pruned sweep trial is final: nothing will resume it
            remove_resume_files(self.workdir)
            raise
        atomic_write_text(json.dumps({**result.to_row(), "protocol": self.digest}, indent=1), done)
        remove_resume_files(self.workdir)  # the result is in MLflow and result.json: resuming is over
        note_resume_point(f"{self.label} seed {self.seed} finished")
        return result

    def _start_run(self, tags: Mapping[str, str]) -> str:
        return self.session.tracker.start_run(
            f"{self.label} seed {self.seed}",
            parent_id=self.session.parent_id,
            key=f"{self.session.parent_id}/{self.label}/s{self.seed}",
            tags={Tag.METHOD: self.name, Tag.SEED: str(self.seed), **tags},
        )

    def _pipeline(self) -> Result:
        """setup -> prune rounds -> final training phase -> measure -> finish."""
        self._setup(self._start_model())
        plans = self.prune_rounds()
        final_phase = Phase.TRAIN if self.control is not None else Phase.FINETUNE
        final = self.fit(final_phase, self.phases.finetune[-1])
        return self.finish(self.measure(final), plans)

    # --- steps ----------------------------------------------------------------------------------

    def _start_model(self) -> nn.Module:
        """The dense baseline's weights (a method with start="dense") or a seeded fresh init."""
        cfg, data = self.session.cfg, self.session.data
        seed_everything(self.seed, cfg.deterministic)
        model = models.create(cfg.model, data.num_classes, data.input_size)
        if self.method is not None and self.method.start == "dense":
            model.load_state_dict(self.baseline.state)
        return model

    def _setup(self, model: nn.Module) -> None:
        """Context, phases and ``method.setup``; the protocol and the schedules into MLflow."""
        self.model, self.ctx = model, self._context(model)
        widths = {u.name: u.channels for u in self.ctx.units}
        self.origin = Origin(widths, self.baseline.result.macs)
        if self.control is not None:
            self.source = inherit.inherited(self.session, self.control.source, self.seed)
        self.phases = self._phase_plan()
        if self.method is not None:
            self.method.setup(model, self.ctx)
        self._log_setup()

    def _phase_plan(self) -> budget.PhasePlan:
        """Every phase's schedule: the method's configured or budget-matched ones; a scratch row's
        single training phase on the dense recipe."""
        cfg = self.session.cfg
        if self.control is None:
            rounds = self.method.rounds(self.ctx)
            return method_phases(cfg, self.name, self.method, rounds)
        epochs = self.control.epochs(cfg, self.source.train_epochs, self.source.macs_ratio)
        return budget.PhasePlan(0, (), (replace(cfg.dense, epochs=epochs),))

    def _log_setup(self) -> None:
        """The run's protocol (digest tag + ``protocol.*`` params), schedules and, for a scratch row,
        where its architecture comes from."""
        session, device = self.session, self.session.runtime.device.type
        if self.control is None:
            config = self.method.config_dict()
            settings = protocol.method_protocol(session.cfg, self.name, config, device, self.method.sparsity_training)
        else:
            source = self.source
            settings = protocol.control_protocol(session.cfg, self.name, source.protocol or source.source, device)
            tags = {Tag.PLAN_SOURCE: source.source, Tag.PLAN_SOURCE_RUN: source.run_id or ""}
            session.tracker.set_tags(self.run_id, tags)
        self.digest = log_protocol(session, self.run_id, settings)
        session.tracker.log_params(self.run_id, _schedule_params(self))

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
        """Sparsity training, importance, allocation and surgery, for each round; resumable per round.
        A scratch row's one step replays its source's plans and re-draws every weight."""
        if self.control is not None:
            return self._replay()
        plans = self._restore_rounds()
        rounds = len(self.phases.finetune)
        self.ctx.rounds = rounds
        for r in range(len(plans), rounds):
            self.ctx.round = r
            if self.method.sparsity_training:
                keep = self.session.cfg.prune.sparsity_checkpoint
                self.fit(Phase.SPARSITY, self.phases.sparsity[r], r, keep=keep)
            if r == 0:  # the trained (or sparsity-trained) model, before any channel goes
                log_sparsity(self.session, self.run_id, self.model)
            plans.append(self.prune_once())
            if r < rounds - 1:
                self.fit(Phase.FINETUNE, self.phases.finetune[r], r)
            self._save_round(r, plans)
        return plans

    def _save_round(self, r: int, plans: list[PruningPlan]) -> None:
        """Round ``r``'s weights, method state and every generator, then its plans (which mark it done)."""
        state = {"model": self.model.state_dict(), "method": self.method.state_dict(), "rng": rng_state(self.ctx)}
        point = f"{self.label} seed {self.seed} round {r + 1}"
        atomic_save(state, self.workdir / f"r{r}-done.pt", resume_point=point)
        save_plans(plans, self.workdir / Artifact.PLANS)  # written last: marks round r complete

    def _replay(self) -> list[PruningPlan]:
        """The scratch control's prune step: the source's plans in order, then a fresh init at the
        pruned shapes (nothing of any trained weight survives: Liu et al.'s control, not a rewind)."""
        plans = list(self.source.plans)
        replay(self.model, plans, self.ctx.input_size, fresh_init_seed=self.seed)
        self.ctx.units = surgery.prunable_units(self.model, self.ctx.input_size)
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
        if "rng" in saved:  # rounds saved before every generator was kept carry none
            set_rng_state(saved["rng"], self.ctx)
        note_resume_point(f"{self.label} seed {self.seed} round {len(plans)}")
        self.ctx.units = surgery.prunable_units(self.model, input_size)
        self.session.say(f"resuming after {len(plans)} completed prune round(s) from {self.workdir}")
        return plans

    def prune_once(self) -> PruningPlan:
        """Importance -> allocation (the method's, else the run's rule) -> surgery, on this round."""
        ctx, model, cfg = self.ctx, self.model, self.session.cfg
        ctx.phase = "prune"
        model.eval()
        scores = as_scores(ctx.units, self.method.importance(model, ctx))  # detached, float32 on the CPU
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
                origin=self.origin,  # the unpruned widths and MACs: the base of cumulative targets
            )
        surgery.apply(model, plan, ctx.input_size)
        ctx.units = surgery.prunable_units(model, ctx.input_size)
        return plan

    def fit(self, phase: str, schedule: Schedule, round_index: int | None = None, keep: str = "best_val") -> FitResult:
        """Train the model for one phase ("sparsity", "finetune" or "train"), logging each epoch.

        ``round_index`` marks a phase inside a prune round (its checkpoint and progress label say so);
        ``keep``: the weights the model ends with, the best-validation epoch's or the last one's.
        """
        ctx = self.ctx
        ctx.phase, ctx.step = phase, 0
        tag = "" if round_index is None else f"r{round_index}"
        hooks = self.method if self.method is not None and (phase == "sparsity" or self.method.finetune_hooks) else None
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
            keep=keep,
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

    def measure(self, final: FitResult) -> Result:
        """Accuracy of the selected checkpoint, params and MACs (on CPU), the training budget, the
        channels removed, and latency when asked."""
        cost = measure.cost(self.model.cpu(), self.session.data.input_size)
        self.model.to(self.session.runtime.device)
        dense = self.baseline.result
        phases, train_size = self.phases.epochs, len(self.session.data.train)
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
            train_epochs=sum(phases.values()),
            train_images=sum(phases.values()) * train_size,
            budget=budget.metrics(phases, train_size),
            channels_removed=self.origin.channels_removed(self.ctx.units),
            latency=latency_of(self.session, self.model),
        )

    def finish(self, result: Result, plans: list[PruningPlan]) -> Result:
        """The final plans and weights into the work dir, then the finished run into MLflow."""
        plans_file, model_file = self.workdir / Artifact.PLANS, self.workdir / Artifact.MODEL
        save_plans(plans, plans_file)
        atomic_save(self.model.state_dict(), model_file)
        log_model(self.session, self.run_id, self.model)
        log_finished(self.session, self.run_id, result, model_tags(self.model), [plans_file, model_file])
        return replace(result, run_id=self.run_id)


def _schedule_params(run: MethodRun) -> dict[str, Any]:
    """The schedules a run trained with (after any budget scaling) and the epochs of every phase."""
    phases = run.phases
    params: dict[str, Any] = {Param.METHOD: run.name, Param.PRUNE: asdict(run.session.cfg.prune)}
    params[Param.PHASE_EPOCHS] = {
        "dense": phases.dense_epochs,
        "sparsity": [s.epochs for s in phases.sparsity],
        "finetune": [s.epochs for s in phases.finetune],
        "scale": phases.scale,
    }
    if run.control is not None:
        params[Param.TRAIN_SCHEDULE] = asdict(phases.finetune[-1])
        return params
    params[Param.METHOD_CONFIG] = run.method.config_dict()
    params[Param.SPARSITY] = asdict(phases.sparsity[0]) if phases.sparsity else DENSE
    params[Param.FINETUNE_SCHEDULE] = asdict(phases.finetune[-1])
    return params
