"""The dense baseline: trained once per (config, seed) and cached under ``results/baselines/<key>``.

The key hashes everything that determines the trained weights (model, data, schedule, seed,
determinism, device type, AMP, torch version) and the version of the code that trains it
(``BASELINE_VERSION`` and the package version), so a second run with other methods reuses it and
says so, and a baseline trained by other code is never reused. ``meta.json`` is written last and
marks the cache entry complete; concurrent processes that share the results dir take a file lock,
so the baseline is trained once.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from bench import budget, measure, models
from bench.atomic import atomic_write_text
from bench.checkpoint import atomic_save, load, note_resume_point
from bench.config import stable_hash
from bench.paths import exclusive_lock, remove_resume_files
from bench.run_log import latency_of, log_finished, log_history, log_model, log_sparsity
from bench.schema import DENSE, Phase, Result, Tag
from bench.session import Session
from bench.training import fit, seed_everything

# The version of how the baseline is trained. Bump it in the same change whenever that changes what
# ``_train`` produces for one config (the loop, augmentation, initialisation, selection, the data
# pipeline): every cached baseline then misses and is trained again. The package version is in the
# key too, but it moves only at releases; between releases this constant is what keeps a stale
# baseline from being reused.
BASELINE_VERSION = 2  # 2: timm stems adapted to stride 8 (issue 14)
PACKAGE = "bench"  # the distribution name in pyproject.toml


@dataclass(frozen=True)
class Baseline:
    """A trained dense model for one seed: its weights and its result record (the reference row)."""

    state: dict[str, torch.Tensor]
    result: Result


def package_version() -> str:
    """The installed version of the ``bench`` distribution; "unknown" when run from a bare source
    tree (then ``BASELINE_VERSION`` alone versions the code)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def baseline_key(session: Session, seed: int) -> str:
    """Hash of everything that determines the dense baseline, the code that trains it included."""
    cfg, data, runtime = session.cfg, session.data, session.runtime
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
            "code": {"baseline_version": BASELINE_VERSION, "package": package_version()},
        }
    )


def dense_baseline(session: Session, seed: int, *, log_run: bool = True) -> Baseline:
    """Train the dense model for ``seed`` or reuse it from the cache; log it as a nested run (once per
    parent) unless ``log_run`` is False. Concurrent processes sharing the results dir train it once.
    Whatever stops it (an error, Ctrl-C, SIGTERM) ends its run FAILED or KILLED with the reason."""
    key = baseline_key(session, seed)
    finished = _finished_dense_run(session, seed) if log_run else None
    run_id = _start_dense_run(session, seed, key) if log_run and finished is None else None
    with _ended_on_failure(session, run_id):
        baseline = _trained_or_cached(session, seed, key, run_id)
    return Baseline(baseline.state, replace(baseline.result, run_id=run_id or finished))


def _ended_on_failure(session: Session, run_id: str | None) -> AbstractContextManager[None]:
    return nullcontext() if run_id is None else session.tracker.ended_on_failure(run_id)


def _trained_or_cached(session: Session, seed: int, key: str, run_id: str | None) -> Baseline:
    """Train the baseline under its lock unless the cache holds it, load it, log the dense run."""
    folder = session.paths.baselines / key
    with exclusive_lock(folder / ".lock"):
        reused = (folder / "meta.json").exists()
        if reused:
            session.say(f"dense baseline seed {seed}: reusing cached baseline {key} from {folder}")
            remove_resume_files(folder)  # left by an invocation killed just after meta.json
        else:
            _train(session, seed, folder)
    note_resume_point(f"dense seed {seed} baseline (cached)")  # a rerun reuses it
    meta = json.loads((folder / "meta.json").read_text())
    state = load(folder / "model.pt")
    model = models.create(session.cfg.model, session.data.num_classes, session.data.input_size)
    model.load_state_dict(state)
    result = _dense_result(seed, meta, latency_of(session, model), len(session.data.train))  # latency: never cached
    if run_id is not None:
        log_sparsity(session, run_id, model)
        log_history(session, run_id, meta["history"])
        log_model(session, run_id, model)
        log_finished(session, run_id, result, {Tag.BASELINE_REUSED: str(reused).lower()}, [folder / "model.pt"])
    return Baseline(state, result)


def _dense_run_key(session: Session, seed: int) -> str:
    return f"{session.parent_id}/{DENSE}/s{seed}"


def _finished_dense_run(session: Session, seed: int) -> str | None:
    """The finished dense child run of this parent (a resumed invocation logged it already), or None."""
    return session.tracker.find_finished(_dense_run_key(session, seed), parent_id=session.parent_id)


def _start_dense_run(session: Session, seed: int, key: str) -> str:
    """Start (or resume an unfinished) dense child run of this parent."""
    tags = {Tag.METHOD: DENSE, Tag.SEED: str(seed), Tag.BASELINE_KEY: key}
    run_key = _dense_run_key(session, seed)
    return session.tracker.start_run(f"dense seed {seed}", parent_id=session.parent_id, key=run_key, tags=tags)


def _dense_result(seed: int, meta: dict[str, Any], latency: dict[str, Any], train_size: int) -> Result:
    """The dense row: its own reference, so its changes and reductions are zero; its budget is its
    own training (``train_size`` images per epoch)."""
    epochs = len(meta["history"])
    return Result(
        method=DENSE,
        seed=seed,
        test_acc=meta["test_acc"],
        best_val_acc=meta["best_val_acc"],
        params=meta["params"],
        macs=meta["macs"],
        dense_test_acc=meta["test_acc"],
        dense_params=meta["params"],
        dense_macs=meta["macs"],
        train_epochs=epochs,
        train_images=epochs * train_size,
        budget=budget.metrics({Phase.DENSE: epochs}, train_size),
        channels_removed=0.0,
        latency=latency,
    )


def _train(session: Session, seed: int, folder: Path) -> None:
    cfg, data = session.cfg, session.data
    verb = "continuing" if (folder / "train.ckpt").exists() else "training"  # training.fit says from where
    session.say(f"dense baseline seed {seed}: {verb} {cfg.dense.epochs} epochs -> {folder}")
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
    remove_resume_files(folder)  # train.ckpt: the weights are in model.pt, the cache entry is complete
