"""What one invocation shares: the workspace (results dir, data, runtime, tracking store) that
``prepare`` opens once, and the session every step of the pipeline reads (config, parent run, output).

A sweep worker opens one workspace per dataset and keeps it between trials; ``bench run`` opens one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench import datasets
from bench.config import RunConfig
from bench.controls import Inherited
from bench.errors import EarlyStop
from bench.paths import Paths, prepare_results_dir
from bench.tracking import Tracker, resolve_tracking_uri
from bench.training import Runtime, resolve_device

EpochCallback = Callable[[str, int, dict[str, float]], None]  # (phase, epoch, stats) after each epoch
Say = Callable[[str], None]

__all__ = ["EarlyStop", "EpochCallback", "Say", "Session", "Workspace", "load_data", "prepare"]


@dataclass(frozen=True)
class Workspace:
    """The results dir, the decoded data, the runtime and the tracking store a run works with."""

    paths: Paths
    data: datasets.DatasetSplits
    runtime: Runtime
    tracker: Tracker


@dataclass(frozen=True)
class Session:
    """What every step of one invocation shares."""

    cfg: RunConfig
    work: Workspace
    parent_id: str
    say: Say = print
    external: Mapping[str, Inherited] = field(default_factory=dict)  # "run:<id>" plan sources, read once
    on_epoch: EpochCallback | None = None  # e.g. a sweep trial's intermediate reports

    @property
    def paths(self) -> Paths:
        return self.work.paths

    @property
    def data(self) -> datasets.DatasetSplits:
        return self.work.data

    @property
    def runtime(self) -> Runtime:
        return self.work.runtime

    @property
    def tracker(self) -> Tracker:
        return self.work.tracker


def prepare(cfg: RunConfig, progress: bool = True, tracker: Tracker | None = None) -> Workspace:
    """Open the workspace of ``cfg``: create the results dir, decode (or load) the data, pick the
    device, and open the tracking store (``tracker`` reuses an open one, as a sweep worker does)."""
    paths = prepare_results_dir(cfg.results_dir)
    data = load_data(cfg, paths, progress)
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
    return Workspace(paths, data, runtime, tracker)


def load_data(cfg: RunConfig, paths: Paths, progress: bool = True) -> datasets.DatasetSplits:
    """The run's dataset splits, decoded once into the shared image cache (``progress``: its bars)."""
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
        progress=progress,
    )
