"""The one training loop, used for the dense baseline, sparsity training and fine-tuning.

Compact in the style of airbench: batches come from uint8 tensors already on the device, the
augmentation is batched, and nothing inside the step synchronises with the host (losses and
correct counts accumulate on the device and are read once per epoch). Tensors are channels_last,
and on CUDA the step runs under bf16 autocast. Each epoch ends with an evaluation on val and test (test is
logged, never used for selection) and an atomic checkpoint, so a killed run resumes from the last
completed epoch. The returned model holds the weights of the best-validation epoch.

Why this module is long: the loop, its optimizer and schedule, the checkpoint/resume of every RNG
and the evaluation are one protocol; split apart, each piece would need the others' invariants.

A checkpoint holds every random generator the run draws from (Python's ``random``, numpy's, torch's
CPU and CUDA ones, and the method's ``ctx.generator``); the batch order and augmentation need none,
being a pure function of (seed, epoch) (``bench.augment``). A resume says what it resumes, and a
checkpoint that cannot be used says why and is trained over.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bench.api import Context, Method
from bench.augment import BatchLoader, default_padding
from bench.checkpoint import atomic_save, load, note_resume_point
from bench.config import Schedule
from bench.datasets import DatasetSplits, Split
from bench.errors import BenchError, first_line


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class Runtime:
    """Where and how the loop runs. ``amp`` (bf16 autocast) applies on CUDA only; ``channels_last``
    applies everywhere: besides CUDA, it measured 15-20% faster per resnet20 training step on the
    2-core Xeon CPU here (oneDNN prefers NHWC)."""

    device: torch.device
    amp: bool = True
    channels_last: bool = True
    eval_batch_size: int = 512
    augment: bool = True
    progress: bool = True  # progress bars
    epoch_lines: bool = True  # one summary line per epoch, kept when bars are off
    compile: bool = False  # torch.compile the training forward; falls back to eager, with the reason, if it fails
    compile_backend: str = "inductor"  # torch.compile's backend (e.g. "aot_eager", "cudagraphs")

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


@dataclass
class FitResult:
    """Outcome of one phase. Accuracies are fractions in [0, 1]; ``test_acc`` is at the best-val epoch."""

    best_epoch: int = -1
    best_val_acc: float = float("nan")
    test_acc: float = float("nan")
    final_val_acc: float = float("nan")
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    compile_status: str = "off"  # "on", "off: <why>" or "failed: <error>" (then it trained eagerly)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}best_val_acc": self.best_val_acc,
            f"{prefix}test_acc": self.test_acc,
            f"{prefix}best_epoch": float(self.best_epoch),
            f"{prefix}seconds": self.seconds,
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from bench.errors import BenchError

        raise BenchError("device 'cuda' requested but no CUDA device is available; use --set device=\"cpu\"")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; ``deterministic`` also forces deterministic kernels (slower)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def lr_factor(schedule: Schedule, epoch: int) -> float:
    """Multiplier of the base lr during ``epoch`` (0-based)."""
    if schedule.warmup_epochs and epoch < schedule.warmup_epochs:
        return (epoch + 1) / (schedule.warmup_epochs + 1)
    if schedule.schedule == "constant":
        return 1.0
    if schedule.schedule == "cosine":
        span = max(schedule.epochs - schedule.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - schedule.warmup_epochs) / span))
    passed = sum(epoch >= round(m * schedule.epochs) for m in schedule.milestones)
    return schedule.gamma**passed


def make_optimizer(model: nn.Module, schedule: Schedule, no_decay: Collection[str] = ()) -> torch.optim.SGD:
    """SGD with the schedule's settings; the parameters named in ``no_decay`` (``Method.no_weight_decay``)
    form a second group with weight decay 0. Without them there is one group, as always."""
    named = dict(model.named_parameters())
    unknown = sorted(set(no_decay) - named.keys())
    if unknown:
        raise BenchError(f"no_weight_decay names parameters the model does not have: {', '.join(unknown[:3])}")
    groups = [{"params": [p for n, p in named.items() if n not in no_decay]}]
    if no_decay:
        groups.append({"params": [p for n, p in named.items() if n in no_decay], "weight_decay": 0.0})
    return torch.optim.SGD(
        groups,
        lr=schedule.lr,
        momentum=schedule.momentum,
        nesterov=schedule.nesterov and schedule.momentum > 0,
        weight_decay=schedule.weight_decay,
    )


class ParamEMA:
    """Exponential moving average of a model's parameters, updated after every optimizer step
    (``Method.ema_decay``): ``a_t = decay * a_{t-1} + (1 - decay) * p_t`` from ``a_0 = 0``, read as
    ``a_t / (1 - decay^t)`` (Adam's bias correction). Buffers (BN running statistics) stay the
    model's own. sgl0's authors (kbui1993/Official_Nonconvex_SGL, ``update_ema`` and
    ``load_ema_params``) average the same parameters with the same correction but start ``a_0`` at
    the initial weights, which the correction then counts ``decay^t / (1 - decay^t)`` times (99x at
    step 1, 2% after 390 steps at 0.99); we chose ``a_0 = 0``, the unbiased form."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise BenchError(f"ema_decay must be in (0, 1) or None, got {decay}")
        self.decay, self.steps = decay, 0
        self.avg = [torch.zeros_like(p, memory_format=torch.preserve_format).detach() for p in model.parameters()]

    def update(self, model: nn.Module) -> None:
        self.steps += 1
        torch._foreach_lerp_(self.avg, [p.detach() for p in model.parameters()], 1 - self.decay)

    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged parameters into ``model`` (a no-op before the first step)."""
        if self.steps:
            correction = 1 - self.decay**self.steps
            with torch.no_grad():
                for p, a in zip(model.parameters(), self.avg, strict=True):
                    p.copy_(a / correction)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "steps": self.steps, "avg": [a.detach().cpu() for a in self.avg]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.avg = [s.to(a.device, a.dtype) for a, s in zip(self.avg, state["avg"], strict=True)]


@contextlib.contextmanager
def averaged(model: nn.Module, ema: ParamEMA | None) -> Iterator[None]:
    """Inside: ``model`` holds the EMA's parameters (when there is one); after: its own again."""
    if ema is None or not ema.steps:
        yield
        return
    live = [p.detach().clone() for p in model.parameters()]
    ema.copy_to(model)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(model.parameters(), live, strict=True):
                p.copy_(saved)


def eval_loader(split: Split, data: DatasetSplits, runtime: Runtime) -> BatchLoader:
    return BatchLoader(
        split,
        runtime.eval_batch_size,
        shuffle=False,
        augment=False,
        mean=data.mean,
        std=data.std,
        device=runtime.device,
        seed=0,
        channels_last=runtime.channels_last,
    )


def train_loader(data: DatasetSplits, schedule: Schedule, runtime: Runtime, seed: int) -> BatchLoader:
    return BatchLoader(
        data.train,
        schedule.batch_size,
        shuffle=True,
        augment=runtime.augment,
        mean=data.mean,
        std=data.std,
        device=runtime.device,
        seed=seed,
        padding=default_padding(data.input_size),
        channels_last=runtime.channels_last,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, runtime: Runtime) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) over the loader's split."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    count = 0
    for x, y in loader:
        with runtime.autocast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train(was_training)
    return (loss_sum.item() / max(count, 1), correct.item() / max(count, 1))


class FeatureCapture:
    """Forward hooks that collect the outputs of named modules during the loss's own forward pass."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.features: list[torch.Tensor] = []
        self._handles = [model.get_submodule(n).register_forward_hook(self._keep) for n in names]

    def _keep(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        # Only passes that build a graph: the per-epoch evaluation runs under no_grad with the hooks
        # still attached, and keeping its outputs would pile up (GBs) and precede the next step's.
        if torch.is_grad_enabled():
            self.features.append(output)

    def take(self) -> list[torch.Tensor]:
        features, self.features = self.features, []
        return features

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class _State:
    """Everything a checkpoint restores."""

    epoch: int = -1  # last completed epoch
    result: FitResult = field(default_factory=FitResult)
    best_state: dict[str, torch.Tensor] | None = None


def fit(
    model: nn.Module,
    data: DatasetSplits,
    schedule: Schedule,
    runtime: Runtime,
    *,
    seed: int,
    method: Method | None = None,
    ctx: Context | None = None,
    checkpoint: Path | None = None,
    desc: str = "train",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    keep: str = "best_val",
) -> FitResult:
    """Train ``model`` in place for ``schedule.epochs``; it ends holding the best-val weights, or the
    last epoch's with ``keep="last"`` (the result's accuracies are the best-val epoch's either way).
    With a method's ``ema_decay``, "weights" are the EMA's parameters: evaluated, selected and kept."""
    model.to(runtime.device, memory_format=runtime.memory_format)
    parts = _parts(model, schedule, method, ctx)
    optimizer, ema = parts.optimizer, parts.ema
    loader = train_loader(data, schedule, runtime, seed)
    val_loader, test_loader = eval_loader(data.val, data, runtime), eval_loader(data.test, data, runtime)
    state = _restore(checkpoint, parts, desc, schedule.epochs)
    if ctx is not None:
        ctx.epochs, ctx.steps_per_epoch, ctx.train_size = schedule.epochs, len(loader), len(data.train)
    bar = _progress_bar(schedule.epochs * len(loader), (state.epoch + 1) * len(loader), desc, runtime)
    trainer = EpochTrainer(model, loader, optimizer, schedule, runtime, method, ctx, desc, lambda: bar.update(1), ema)
    try:
        for epoch in range(state.epoch + 1, schedule.epochs):
            stats = trainer.run(epoch)
            with averaged(model, ema):
                stats.update(evaluate_splits(model, val_loader, test_loader, runtime))
                _select(state, model, epoch, stats)
            state.epoch = epoch
            state.result.history.append(stats)
            _save(checkpoint, state, parts, f"{readable(desc)} epoch {epoch + 1}/{schedule.epochs}")
            if runtime.epoch_lines:
                _summary_line(bar, desc, epoch, schedule.epochs, stats)
            if on_epoch:
                on_epoch(epoch, stats)
    finally:
        bar.close()
        trainer.close()
    state.result.compile_status = trainer.compile_status
    if keep == "best_val":
        return _finish(state, model)
    if ema is not None:
        ema.copy_to(model)
    return state.result


def _progress_bar(total: int, initial: int, desc: str, runtime: Runtime) -> tqdm:
    """The phase's step bar (off with ``runtime.progress`` False; epoch lines print above it)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        disable=not runtime.progress,
        leave=False,
        dynamic_ncols=True,
    )


@dataclass
class EpochTrainer:
    """One training epoch over ``loader``, with the method's hooks in the documented order.

    Loss and correct counts accumulate on the device; the only host sync is the read at the
    epoch's end. ``capture`` feeds :meth:`Method.regularization` with the features of the same
    forward pass.
    """

    model: nn.Module
    loader: BatchLoader
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    runtime: Runtime
    method: Method | None = None
    ctx: Context | None = None
    desc: str = "train"
    on_step: Callable[[], None] = lambda: None  # progress-bar tick
    ema: ParamEMA | None = None  # updated after every step (the method's ema_decay)
    capture: FeatureCapture | None = field(init=False, default=None)
    compile_status: str = field(init=False, default="off")
    _forward: Callable[[torch.Tensor], torch.Tensor] = field(init=False)
    _compiled_once: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        features = self.method.feature_modules(self.model) if self.method is not None else []
        if self.method is not None:
            self.capture = FeatureCapture(self.model, features)
        self._forward = self.model
        if self.runtime.compile and features:
            self.compile_status = "off: the method's feature hooks need eager forwards"
        elif self.runtime.compile:
            try:
                self._forward = torch.compile(self.model, backend=self.runtime.compile_backend)
                self.compile_status = "on"
            except Exception as exc:  # e.g. an unknown backend: fail over at once
                self._fall_back(exc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's forward, compiled when asked; a compile that fails falls back to eager, once."""
        if self.compile_status != "on" or self._compiled_once:
            return self._forward(x)
        try:
            out = self._forward(x)
        except Exception as exc:  # inductor/dynamo raise many kinds; training goes on eagerly
            self._fall_back(exc)
            return self.model(x)
        self._compiled_once = True
        return out

    def _fall_back(self, exc: Exception) -> None:
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        self.compile_status = f"failed: {type(exc).__name__}: {reason}"
        print(f"warning: torch.compile {self.compile_status}; training eagerly", file=sys.stderr)
        self._forward = self.model

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()

    def run(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.loader.set_epoch(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr * lr_factor(self.schedule, epoch)
        if self.ctx is not None:
            self.ctx.epoch = epoch
        loss_sum = torch.zeros((), device=self.runtime.device)
        correct = torch.zeros((), device=self.runtime.device, dtype=torch.long)
        seen, start = 0, time.perf_counter()
        for x, y in self.loader:
            logits, loss = self.step(x, y)
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            self.on_step()
        seconds = time.perf_counter() - start
        train_loss = loss_sum.item() / max(seen, 1)  # the epoch's one host sync
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {epoch + 1} of '{self.desc}'")
        if self.method is not None:
            self.method.on_epoch_end(self.model, self.ctx)
        return {
            "train_loss": train_loss,
            "train_acc": correct.item() / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9),
        }

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward (features captured) -> loss + regularization -> backward -> hooks -> optimizer step."""
        method, ctx = self.method, self.ctx
        with self.runtime.autocast:
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.schedule.label_smoothing)
            if method is not None:
                extra = method.regularization(self.model, self.capture.take(), ctx)
                if extra is not None:
                    loss = loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if method is not None:
            method.after_backward(self.model, ctx)
        self.optimizer.step()
        if method is not None:
            method.after_step(self.model, ctx)
            ctx.step += 1
        if self.ema is not None:
            self.ema.update(self.model)
        return logits, loss


def evaluate_splits(model, val_loader, test_loader, runtime) -> dict[str, float]:
    val_loss, val_acc = evaluate(model, val_loader, runtime)
    test_loss, test_acc = evaluate(model, test_loader, runtime)
    return {"val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}


def _select(state: _State, model: nn.Module, epoch: int, stats: dict[str, float]) -> None:
    """Keep the best-validation weights (ties: the later epoch, which saw more training)."""
    result = state.result
    if not (stats["val_acc"] < result.best_val_acc):  # also true while best is NaN
        result.best_epoch, result.best_val_acc, result.test_acc = epoch, stats["val_acc"], stats["test_acc"]
        state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    result.final_val_acc = stats["val_acc"]
    result.seconds += stats["epoch_seconds"]


def _finish(state: _State, model: nn.Module) -> FitResult:
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return state.result


def _summary_line(bar: tqdm, desc: str, epoch: int, epochs: int, s: dict[str, float]) -> None:
    """One line per epoch, printed above the bar (and printed even when bars are off)."""
    bar.write(
        f"{desc} epoch {epoch + 1}/{epochs}: loss {s['train_loss']:.3f} train {s['train_acc']:.2%} "
        f"val {s['val_acc']:.2%} test {s['test_acc']:.2%} lr {s['lr']:.4g} "
        f"{s['epoch_seconds']:.1f}s ({s['images_per_s']:.0f} img/s)"
    )


@dataclass
class _Parts:
    """What a checkpoint holds besides the loop's own progress (``_State``): the live weights
    (which training resumes from), the optimizer, the method's state, the EMA and every RNG."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: Method | None = None
    ema: ParamEMA | None = None
    ctx: Context | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method_state": self.method.state_dict() if self.method else {},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(self.ctx),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.method is not None:
            self.method.load_state_dict(saved["method_state"])
        if self.ema is not None and saved.get("ema") is not None:
            self.ema.load_state_dict(saved["ema"])
        set_rng_state(saved["rng"], self.ctx)


def _parts(model: nn.Module, schedule: Schedule, method: Method | None, ctx: Context | None) -> _Parts:
    """The optimizer (the method's no-decay group apart) and the EMA (the method's decay) of ``model``."""
    optimizer = make_optimizer(model, schedule, method.no_weight_decay(model, ctx) if method is not None else ())
    decay = method.ema_decay(ctx) if method is not None else None
    return _Parts(model, optimizer, method, ParamEMA(model, decay) if decay is not None else None, ctx)


def _save(path: Path | None, state: _State, parts: _Parts, what: str) -> None:
    """The checkpoint of the epoch just completed; ``what`` (``"dense seed 0 epoch 2/4"``) is what an
    interrupted command reports as saved."""
    if path is None:
        return
    progress = {"epoch": state.epoch, "best_state": state.best_state, "result": asdict(state.result)}
    atomic_save({**parts.state_dict(), **progress}, path, resume_point=what)


def _restore(path: Path | None, parts: _Parts, desc: str, epochs: int) -> _State:
    """Resume from ``path`` when it exists, and say so; a checkpoint that cannot be used (unreadable,
    or of another model or method state) leaves every part as it was, says why, and the phase
    starts over."""
    if path is None or not path.exists():
        return _State()
    before = copy.deepcopy(parts.state_dict())
    try:
        saved = load(path)
        parts.load_state_dict(saved)
        state = _State(saved["epoch"], FitResult(**saved["result"]), saved["best_state"])
    except Exception as exc:  # torch.load, pickle, zip, key and size errors alike: nothing to resume
        parts.load_state_dict(before)
        why = f"{type(exc).__name__}: {first_line(exc)}"[:300]
        print(f"warning: {readable(desc)}: cannot resume from {path} ({why}); starting at epoch 1/{epochs}",
              file=sys.stderr)  # fmt: skip
        return _State()
    done = state.epoch + 1
    note_resume_point(f"{readable(desc)} epoch {done}/{epochs}")
    tqdm.write(resume_line(desc, done, epochs, path))
    return state


def resume_line(desc: str, done: int, epochs: int, path: Path) -> str:
    """``dense seed 0: resuming at epoch 3/4 from <path>`` (``done`` epochs were completed before)."""
    if done >= epochs:
        return f"{readable(desc)}: all {epochs} epochs already done, restored from {path}"
    return f"{readable(desc)}: resuming at epoch {done + 1}/{epochs} from {path}"


def readable(desc: str) -> str:
    """A phase's bar label in words for messages: ``dense s0`` -> ``dense seed 0``."""
    return re.sub(r"\bs(\d+)$", r"seed \1", desc)


def rng_state(ctx: Context | None = None) -> dict[str, Any]:
    """Every generator the loop may draw from, as tensors and plain containers (``weights_only``
    loads them): Python's, numpy's (its key as an int64 tensor), torch's CPU one, each CUDA
    device's (an empty list while CUDA is not initialised: the run has not used it) and the
    method's ``ctx.generator``."""
    numpy = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "method": ctx.generator.get_state() if ctx is not None else None,
    }


def set_rng_state(saved: dict[str, Any] | torch.Tensor, ctx: Context | None = None) -> None:
    """Put back what :func:`rng_state` saved. CUDA states go back only onto as many devices as were
    saved (a warning otherwise: the run goes on, its CUDA draws differ from an uninterrupted one's).
    A bare tensor is a checkpoint from before every generator was saved: torch's CPU state."""
    if isinstance(saved, torch.Tensor):
        torch.set_rng_state(saved)
        return
    random.setstate(saved["python"])
    numpy = saved["numpy"]
    state = {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]}
    np.random.set_state({"bit_generator": "MT19937", "state": state, "has_gauss": numpy["has_gauss"],
                         "gauss": numpy["gauss"]})  # fmt: skip
    torch.set_rng_state(saved["torch"])
    _set_cuda_rng_state(saved["cuda"])
    if ctx is not None and saved.get("method") is not None:
        ctx.generator.set_state(saved["method"])


def _set_cuda_rng_state(states: list[torch.Tensor]) -> None:
    if not states:
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == len(states):
        torch.cuda.set_rng_state_all(states)
        return
    print(
        f"warning: the checkpoint holds the CUDA random states of {len(states)} device(s) and this machine "
        f"has {count}; the run goes on, but its CUDA random draws differ from an uninterrupted run's",
        file=sys.stderr,
    )


def seconds_per_image(
    model: nn.Module, data: DatasetSplits, batch_size: int, runtime: Runtime, steps: int = 2
) -> float:
    """Measured training time per image (forward+backward+step) on a throwaway copy, after one warm-up step."""
    probe = copy.deepcopy(model).to(runtime.device, memory_format=runtime.memory_format).train()
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.0)
    batch = min(batch_size, len(data.train))
    x = torch.randn(batch, 3, data.input_size, data.input_size, device=runtime.device)
    y = torch.zeros(batch, dtype=torch.long, device=runtime.device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with runtime.autocast:
            loss = F.cross_entropy(probe(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:]) / batch
