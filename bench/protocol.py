"""The protocol of a run: every setting that shaped its result except the seed, and its digest.

Reports aggregate runs of one digest only (``bench report`` never pools a 4-epoch baseline with a
160-epoch one), and a (digest, method, seed) counts once. Each finished run stores the digest as the
tag ``bench.protocol`` and the settings themselves as params ``protocol.<key>`` (keys as in ``--set``,
e.g. ``protocol.dense.epochs``), so a report can say which settings two rows differ in and group by any
of them.

What is in it: the model, the data slice (not its location on disk), the dense recipe (a method's
reference row and, for most methods, its starting point), the method and its resolved hyperparameters,
its sparsity and fine-tune schedules as configured, the pruning rule, the matched budget, the device
type and the numerics switches (determinism, AMP, channels-last, compile). What is not: the seed, the
other methods of the invocation, where results and runs are stored, progress output, and whether and
how latency is measured (a measurement of the final model that shapes no training; its protocol is
stored beside each latency figure, and a command re-run with ``latency=true`` then replaces the run
without it as the latest of its (digest, method, seed)). The code version is not in it either
(``env.git_sha`` is a tag): a report over several commits shows them side by side in its environment
table instead of splitting
every row.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.config import RunConfig, stable_hash
from bench.schema import DENSE

DATA_LOCATION = ("root", "download")  # where the data is, not what it is


def dense_protocol(cfg: RunConfig, device: str) -> dict[str, Any]:
    """The settings that shape the dense baseline's row."""
    data = {k: v for k, v in asdict(cfg.data).items() if k not in DATA_LOCATION}
    numerics = {"deterministic": cfg.deterministic, "amp": cfg.amp, "channels_last": cfg.channels_last}
    protocol = {"model": cfg.model, "data": data, "dense": asdict(cfg.dense), "device": device, **numerics}
    protocol["compile"] = cfg.compile
    return {"method": DENSE, **protocol}


def method_protocol(
    cfg: RunConfig, name: str, method_config: dict[str, Any], device: str, sparsity_training: bool
) -> dict[str, Any]:
    """The settings that shape a pruning method's row (``method_config``: its resolved hyperparameters;
    the sparsity schedule only for a method that trains for sparsity)."""
    protocol = {**dense_protocol(cfg, device), "method": name, "method_config": method_config}
    if sparsity_training:
        protocol["sparsity"] = asdict(cfg.sparsity_schedule(name))
    protocol["finetune"] = asdict(cfg.finetune_schedule(name))
    return {**protocol, "prune": asdict(cfg.prune), "budget": cfg.budget}


def control_protocol(cfg: RunConfig, name: str, source_digest: str, device: str) -> dict[str, Any]:
    """The settings that shape a scratch row: its budget rule, the matched budget, and the protocol
    (digest) of the run whose architecture it trains."""
    return {**dense_protocol(cfg, device), "method": name, "scratch_source": source_digest, "budget": cfg.budget}


def digest(protocol: dict[str, Any]) -> str:
    """12 hex digits of the canonical JSON of ``protocol``."""
    return stable_hash(protocol)
