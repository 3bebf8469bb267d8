"""Measurement with one protocol: params, FLOPs (fvcore conv+linear MACs) and latency.

FLOPs here are multiply-accumulates of conv and linear layers (methods/README.md convention, as in Li et
al. and HRank). fvcore already counts one per MAC; we keep only its conv and linear operators so
BN, pooling and the shortcut padding are excluded. ``torch.utils.flop_counter`` counts 2 per MAC
and is the cross-check in the tests.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from bench.errors import BenchError

FVCORE_MAC_OPS = ("conv", "linear", "addmm")  # fvcore's names for aten conv, linear and the addmm of a linear
FLOP_CONVENTION = "fvcore conv+linear MACs (1 per multiply-accumulate)"


def count_params(model: nn.Module) -> int:
    """All trainable parameters, BN included (methods/README.md convention)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def example_input(input_size: int, batch: int = 1, device: str | torch.device = "cpu") -> torch.Tensor:
    return torch.randn(batch, 3, input_size, input_size, device=device)


def count_macs(model: nn.Module, input_size: int = 32) -> int:
    """Conv + linear MACs for one image, counted by fvcore on CPU in eval mode."""
    with warnings.catch_warnings():  # fvcore's import jit-scripts a loss: a FutureWarning on every CLI call
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, example_input(input_size, device=device))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_op = analysis.by_operator()
    finally:
        model.train(was_training)
    return int(sum(by_op.get(op, 0) for op in FVCORE_MAC_OPS))


def count_macs_torch(model: nn.Module, input_size: int = 32) -> int:
    """The same figure from ``torch.utils.flop_counter`` (2 FLOPs per MAC), halved: the cross-check."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(example_input(input_size, device=device))
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()["Global"]
    keep = {"convolution", "mm", "addmm", "_convolution"}
    return int(sum(v for op, v in counts.items() if str(op).split(".")[1] in keep) // 2)


@dataclass(frozen=True)
class Cost:
    """Size of a model: params (count) and FLOPs (MACs per image at ``input_size`` px)."""

    params: int
    macs: int
    input_size: int
    convention: str = FLOP_CONVENTION


def cost(model: nn.Module, input_size: int = 32) -> Cost:
    return Cost(count_params(model), count_macs(model, input_size), input_size)


@dataclass(frozen=True)
class LatencyProtocol:
    """How latency was measured; stored with every measured run."""

    batch_size: int
    input_size: int
    device: str
    threads: int
    warmup: int
    repeats: int
    timer: str  # "cuda-events" or "perf_counter"
    dtype: str = "float32"
    rounds: int = 1  # > 1: interleaved with other models in that many rounds (measure_latencies)


@dataclass(frozen=True)
class Latency:
    """Forward latency per batch in milliseconds: median and interquartile range over repeats."""

    median_ms: float
    iqr_ms: float
    protocol: LatencyProtocol

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, **asdict(self.protocol)}


def measure_latency(
    model: nn.Module,
    input_size: int = 32,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int = 30,
) -> Latency:
    """Median and IQR of inference latency (ms per batch) after ``warmup`` untimed forwards.

    The model is moved to ``device`` and timed in eval mode; its train/eval mode is restored after.
    """
    return measure_latencies({"model": model}, input_size, batch_size, device, warmup, repeats)["model"]


def measure_latencies(
    models: Mapping[str, nn.Module],
    input_size: int = 32,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int = 30,
    rounds: int = 1,
) -> dict[str, Latency]:
    """:func:`measure_latency` for several models side by side: after each one's warm-up, ``rounds``
    rounds each time every model (one untimed forward after the switch, then ``repeats / rounds``
    timed ones), so that drift in the machine's speed (other tenants, clocks) hits all of them
    alike instead of whichever was measured at a slow moment. Ratios between them are then fair."""
    if repeats < 1 or warmup < 0 or batch_size < 1 or not 1 <= rounds <= repeats:
        raise BenchError(
            f"latency needs repeats >= 1, warmup >= 0, batch_size >= 1 and 1 <= rounds <= repeats; got "
            f"repeats={repeats}, warmup={warmup}, batch_size={batch_size}, rounds={rounds}"
        )
    device = torch.device(device)
    modes = {name: model.training for name, model in models.items()}
    placed = {name: model.to(device).eval() for name, model in models.items()}
    x = example_input(input_size, batch_size, device)
    timer = _cuda_timer if device.type == "cuda" else _cpu_timer
    times: dict[str, list[float]] = {name: [] for name in placed}
    try:
        with torch.inference_mode():
            for model in placed.values():
                for _ in range(warmup):
                    model(x)
            for r in range(rounds):
                for name, model in placed.items():
                    if rounds > 1:
                        model(x)  # untimed: after the switch, the caches hold another model's weights
                    count = repeats // rounds + (r < repeats % rounds)
                    times[name] += [timer(model, x) for _ in range(count)]
    finally:
        for name, model in models.items():
            model.train(modes[name])
    protocol = LatencyProtocol(
        batch_size,
        input_size,
        str(device),
        torch.get_num_threads(),
        warmup,
        repeats,
        "cuda-events" if device.type == "cuda" else "perf_counter",
        rounds=rounds,
    )
    return {name: _summary(t, protocol) for name, t in times.items()}


def _summary(times: list[float], protocol: LatencyProtocol) -> Latency:
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) >= 2 else (times[0], 0, times[0])
    return Latency(statistics.median(times), q3 - q1, protocol)


def _cpu_timer(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1e3


def _cuda_timer(model: nn.Module, x: torch.Tensor) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    model(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def duration(seconds: float) -> str:
    """A human duration for estimates and timings: ``42 s`` below 90 s, ``3.5 min`` below 90 min,
    ``1.2 h`` above."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
