"""How long ``bench speed`` will take, estimated before it measures anything.

An estimate, not a measurement. One training step of each model is timed (after an untimed one,
at a batch of at most 32, scaled to the batch size); every training step, forward and latency cell
of the sections is costed from it by counting what the section will run. The per-image costs of
the DataLoader pipelines and the FFR compile are fixed costs, measured on the 2-core CPU here
(they are smaller on a bigger machine, so there the estimate errs long).
"""

from __future__ import annotations

import os
import time

import torch

from bench import models, named_plans
from bench.augment import normalize
from bench.benchmarks.data_pipeline import sync
from bench.benchmarks.latency import BATCH_SIZES, ROUNDS
from bench.benchmarks.speed import Bench, plain_step
from bench.training import Runtime

PROBE_BATCH = 32  # images in the probe step: cheap, and large enough to scale linearly from
PIL_IMAGE_S = 1.4e-4  # one 32 px image through PIL crop/flip/ToTensor/Normalize (7,500 img/s, one process)
JPEG_IMAGE_S = 2.0e-4  # reading and decoding one CIFAR JPEG besides (ImageFolder: 2,900 img/s, one process)
LOADER_START_S = 0.3  # a DataLoader starting its worker processes
IMAGEFOLDER_SCAN_S = 1.0  # ImageFolder listing CIFAR-10's 50,000 training files
COMPILE_S = 20.0  # FFR's compiled kernel: inductor compiles once per process and shapes (10-30 s here)
FFR_STEP_FACTOR = 1.5  # (d)'s three loops (ffr compiled, ffr eager, plain) against three plain ones (CPU: 1.6)
FORWARD_SHARE = 1 / 3  # a forward's share of a training step (the backward costs about two forwards)
MIN_FORWARD_S = {"cpu": 2e-3, "cuda": 5e-4}  # a batch-1 forward is bound by per-layer overheads
PRUNED_SHARE = 0.6  # a pruned variant's forward against the dense one's (50% FLOPs and Li et al.'s plans)
WARMUP_FORWARDS = 10  # measure.measure_latencies' default warm-up


def estimate(bench: Bench) -> dict[str, float]:
    """Estimated seconds of each section, by report key."""
    s = bench.settings
    step = {name: probe_step(name, bench) for name in dict.fromkeys((s.model, s.ffr_model))}
    return {
        "train_step": _train_step_s(bench, step[s.model]),
        "data_pipeline": _data_pipeline_s(bench),
        "latency": _latency_s(bench, step[s.model]),
        "ffr_overhead": 3 * (s.repeats + 1) * s.steps * step[s.ffr_model] * FFR_STEP_FACTOR + COMPILE_S,
    }


def probe_step(model_name: str, bench: Bench) -> float:
    """Seconds of one training step of ``model_name`` at the batch size, from one timed small step."""
    data, runtime = bench.data, bench.runtime
    batch = min(PROBE_BATCH, bench.settings.batch_size, len(data.train))
    model = models.create(model_name, data.num_classes, data.input_size)
    model.to(runtime.device, memory_format=runtime.memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = normalize(data.train.images[:batch].to(runtime.device), data.mean, data.std)
    x = x.contiguous(memory_format=runtime.memory_format)
    y = data.train.labels[:batch].to(runtime.device)
    _step(model, opt, x, y, runtime)  # untimed: allocator, kernels, first touch of the weights
    start = time.perf_counter()
    _step(model, opt, x, y, runtime)
    return (time.perf_counter() - start) * bench.settings.batch_size / batch


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, runtime: Runtime):
    plain_step(model, opt, x, y, runtime)
    sync(runtime)


def _parallel(workers: int) -> int:
    """Processes that really run a DataLoader's per-image work at once (the main one when 0)."""
    return max(1, min(workers, os.cpu_count() or 1))


def _train_step_s(bench: Bench, step_s: float) -> float:
    """(a): four loops (ours, bare, bare NCHW, DataLoader), each a warm-up and ``repeats`` passes;
    the DataLoader loop also transforms every image per image."""
    s = bench.settings
    passes = s.repeats + 1
    images = passes * min(s.steps * s.batch_size, len(bench.data.train))
    return 4 * passes * s.steps * step_s + images * PIL_IMAGE_S / _parallel(s.workers) + LOADER_START_S


def _data_pipeline_s(bench: Bench) -> float:
    """(b): ``repeats`` passes of three pipelines over ``images``; ours is negligible against the
    per-image ones (ImageFolder also lists its folder and decodes JPEGs)."""
    s = bench.settings
    images = min(s.images, len(bench.data.train))
    per_pass = images * (2 * PIL_IMAGE_S + JPEG_IMAGE_S) / _parallel(s.workers) + IMAGEFOLDER_SCAN_S
    return s.repeats * (per_pass + 2 * LOADER_START_S * (s.workers > 0))


def _latency_s(bench: Bench, step_s: float) -> float:
    """(c): every variant, at each batch size, warm-up plus ``latency_repeats`` timed forwards (and
    one untimed forward per round), a pruned variant at ``PRUNED_SHARE`` of the dense cost."""
    s = bench.settings
    variants = 1 + len(named_plans.plans_for(s.model)) + 4  # dense, Li et al.'s plans, l1/ffr x round_to
    forwards = WARMUP_FORWARDS + s.latency_repeats + min(ROUNDS, s.latency_repeats)
    floor = MIN_FORWARD_S.get(bench.runtime.device.type, MIN_FORWARD_S["cpu"])
    per_forward = [max(floor, step_s * FORWARD_SHARE * b / s.batch_size) for b in BATCH_SIZES]
    return forwards * sum(per_forward) * (1 + PRUNED_SHARE * (variants - 1))
