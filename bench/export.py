"""Models back out of the tracking store, and out of bench.

- :func:`load_pruned` rebuilds the model of a finished method (or dense) run from what the run
  stored: the model name and dataset (tags), its number of classes and input size, the pruning
  plan of every round (``plans.json``, replayed by ``bench.surgery``) and the final weights
  (``model.pt``). Any dataset and input size: resnet56 on Tiny ImageNet comes back with 200
  outputs and the 64 px stem, not the 10-class 32 px default of ``models.create``.
- :func:`export` writes that model in formats a user loads without bench: ``safetensors`` (the
  weights, with the architecture's metadata in the header and in a JSON file beside it: a
  safetensors file holds tensors only, so rebuilding the module needs the architecture's code;
  the metadata says which, with every layer's channel counts), ``pt2`` (a ``torch.export``
  program: code and weights, ``torch.export.load(path).module()(x)``) and ``onnx`` (torch's
  dynamo exporter; needs the ``onnx`` and ``onnxscript`` packages: ``uv sync --extra onnx``).
- :func:`log_mlflow_model` logs a model as an MLflow model (MLflow's ``pt2`` format, which loads
  without bench) under the run's artifact ``model``, so that
  ``mlflow.pytorch.load_model(f"runs:/{run_id}/model")`` works.

Every export takes float32 NCHW RGB images scaled to [0, 1] and normalised per channel with the
dataset's mean and std (the metadata holds both), and returns logits (batch, num_classes).

Why this module is long: the three ways out (a module, files, an MLflow model) share one reader of
the run and one rebuild, and each format's writer is a few lines beside them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from torch import nn

from bench.errors import BenchError, first_line, unknown_name
from bench.plan import PruningPlan
from bench.schema import Artifact, Tag
from bench.store import Store
from bench.tracking import quiet_logger

FORMATS: Mapping[str, str] = {
    "safetensors": "the weights (.safetensors) and the architecture as JSON; rebuilding needs the model's code",
    "pt2": "a torch.export program (.pt2): torch.export.load(path).module()(x), no model code needed",
    "onnx": "an ONNX graph (.onnx) for onnxruntime and other runtimes; needs the packages onnx and onnxscript",
}
SUFFIXES: Mapping[str, str] = {"safetensors": ".safetensors", "pt2": ".pt2", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxscript")
# (classes, px) of the built-in datasets, for runs that predate the num_classes / input_size tags
SHAPES: Mapping[str, tuple[int, int]] = {"cifar10": (10, 32), "cifar100": (100, 32), "tinyimagenet": (200, 64)}
# the run's model shape, written on every run by bench.run_log.identity_tags
NUM_CLASSES_TAG = Tag.NUM_CLASSES
INPUT_SIZE_TAG = Tag.INPUT_SIZE
MLFLOW_MODEL = "model"  # the artifact folder of the MLflow model: runs:/<run id>/model
METADATA_VERSION = 1


@dataclass(frozen=True)
class StoredModel:
    """What a finished run stored about its model: enough to rebuild it exactly."""

    run_id: str
    model: str  # registry name: "resnet56", "timm:resnet18"
    dataset: str
    num_classes: int
    input_size: int  # px (square)
    method: str  # "dense" for a dense baseline run
    seed: str
    plans: tuple[PruningPlan, ...]  # every round's plan, in order; empty for a dense run
    state: Mapping[str, torch.Tensor]  # the final weights, on the CPU


# --- reading a run -----------------------------------------------------------------------------


def open_store(tracking_uri: str | None = None, results_dir: str | Path = "results") -> Store:
    """The store ``tracking_uri`` names, else ``$MLFLOW_TRACKING_URI``, else the sqlite one under ``results_dir``."""
    from bench.tracking import resolve_tracking_uri

    return Store.open(resolve_tracking_uri(tracking_uri, Path(results_dir).resolve()))


def read_stored(run_id: str, tracking_uri: str | None = None, results_dir: str | Path = "results") -> StoredModel:
    """Read what rebuilds the model of run ``run_id``; BenchError naming the run when it holds none."""
    store = open_store(tracking_uri, results_dir)
    run = _model_run(store, run_id.strip())
    tags = run.data.tags
    model, dataset = _identity(store, run)
    state = _download_state(store, run.info.run_id)
    num_classes, input_size = _shape(tags, dataset, model, state)
    plans = ()
    if Artifact.PLANS in store.artifacts(run.info.run_id):
        plans = tuple(PruningPlan.from_dict(d) for d in store.read_json(run.info.run_id, Artifact.PLANS))
    method, seed = tags.get(Tag.METHOD, "?"), tags.get(Tag.SEED, "?")
    return StoredModel(run.info.run_id, model, dataset, num_classes, input_size, method, seed, plans, state)


def _model_run(store: Store, run_id: str) -> Run:
    """The run, if it holds a model: a parent run names its children, any other run its status."""
    run = store.get_run(run_id)
    if Tag.KIND in run.data.tags:
        raise _parent_error(store, run)
    if Artifact.MODEL not in store.artifacts(run_id):
        raise BenchError(
            f"MLflow run '{run_id}' ({run.info.status}) has no {Artifact.MODEL}: only a finished method or dense "
            "run of bench run or bench sweep holds a model"
        )
    return run


def _parent_error(store: Store, run: Run, shown: int = 8) -> BenchError:
    children = store.children(run)
    listed = [f"{c.data.tags.get(Tag.METHOD, '?')} s{c.data.tags.get(Tag.SEED, '?')} {c.info.run_id}" for c in children]
    more = f", and {len(listed) - shown} more" if len(listed) > shown else ""
    kind = run.data.tags[Tag.KIND]
    return BenchError(
        f"MLflow run '{run.info.run_id}' is the parent run of a bench {kind}, which holds no model; pass one of "
        f"its child runs: {', '.join(listed[:shown]) or 'none yet'}{more}"
    )


def _identity(store: Store, run: Run) -> tuple[str, str]:
    """The model name and dataset: tags on every run, else the run's stored config."""
    tags = run.data.tags
    if Tag.MODEL in tags and Tag.DATASET in tags:
        return tags[Tag.MODEL], tags[Tag.DATASET]
    config = store.read_json(run.info.run_id, Artifact.CONFIG)
    return config["model"], config["data"]["name"]


def _download_state(store: Store, run_id: str) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        path = store.client.download_artifacts(run_id, Artifact.MODEL, tmp)
        return torch.load(path, map_location="cpu", weights_only=True)


def _shape(tags: Mapping[str, str], dataset: str, model: str, state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(classes, px): the run's tags, else the built-in dataset's, else (an image folder stored before
    the tags) the classifier's rows and 32 px."""
    if NUM_CLASSES_TAG in tags and INPUT_SIZE_TAG in tags:
        return int(tags[NUM_CLASSES_TAG]), int(tags[INPUT_SIZE_TAG])
    if dataset in SHAPES:
        return SHAPES[dataset]
    return _classifier_rows(model, state), 32


def _classifier_rows(model: str, state: Mapping[str, torch.Tensor]) -> int:
    """The number of classes a state dict was trained for: the rows of the model's last linear layer."""
    from bench import models

    with torch.random.fork_rng(devices=[]):
        probe = models.create(model, 2)
    linear = [name for name, module in probe.named_modules() if isinstance(module, nn.Linear)]
    if not linear or f"{linear[-1]}.weight" not in state:
        raise BenchError(f"cannot tell how many classes the stored {model} has: the run has no {NUM_CLASSES_TAG} tag")
    return int(state[f"{linear[-1]}.weight"].shape[0])


# --- rebuilding --------------------------------------------------------------------------------


def rebuild(stored: StoredModel) -> nn.Module:
    """The run's model: created for its classes and input size, every round's plan replayed, the
    stored weights loaded, in eval mode, on the CPU. The global RNG is left as it was."""
    from bench import models, surgery

    with torch.random.fork_rng(devices=[]):
        model = models.create(stored.model, stored.num_classes, stored.input_size)
    for plan in stored.plans:
        surgery.apply(model, plan, stored.input_size)
    try:
        model.load_state_dict(stored.state)
    except RuntimeError as exc:
        raise BenchError(
            f"the weights of MLflow run '{stored.run_id}' do not fit {stored.model} rebuilt for "
            f"{stored.num_classes} classes at {stored.input_size} px: {first_line(exc)}"
        ) from exc
    return model.eval()


def load_pruned(run_id: str, tracking_uri: str | None = None, results_dir: str | Path = "results") -> nn.Module:
    """The pruned model of a finished method run (or the dense model of a dense run), in eval mode.

    ``tracking_uri``: the MLflow store (default ``$MLFLOW_TRACKING_URI``, else the sqlite store under
    ``results_dir``). A run id the store lacks, a parent run or a run without a model: BenchError.
    """
    return rebuild(read_stored(run_id, tracking_uri, results_dir))


def example_input(input_size: int, batch: int = 2) -> torch.Tensor:
    """A seeded random batch of ``input_size`` px images (batch 2: ``torch.export`` fixes a batch of 1)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, input_size, input_size, generator=generator)


# --- metadata ----------------------------------------------------------------------------------


def metadata(stored: StoredModel, model: nn.Module) -> dict[str, Any]:
    """What a user without bench needs to know about an export: which architecture, its classes and
    input, how inputs are normalised, every conv and linear layer's channels, and the plans."""
    mean, std = normalization(stored.dataset)
    return {
        "bench_export": METADATA_VERSION,
        "run_id": stored.run_id,
        "model": stored.model,
        "method": stored.method,
        "seed": int(stored.seed) if stored.seed.isdigit() else stored.seed,
        "dataset": stored.dataset,
        "num_classes": stored.num_classes,
        "input_size": stored.input_size,
        "input": {
            "shape": ["batch", 3, stored.input_size, stored.input_size],
            "dtype": "float32",
            "normalize": {"mean": list(mean), "std": list(std)},
            "note": "RGB, pixel / 255, then (x - mean) / std per channel",
        },
        "output": f"logits, shape (batch, {stored.num_classes})",
        "params": sum(p.numel() for p in model.parameters()),
        "layers": layer_channels(model),
        "plans": [plan.to_dict() for plan in stored.plans],
    }


def normalization(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std (in [0, 1] units) the run's inputs were normalised with."""
    from bench import datasets

    return datasets.NORMALIZATION[dataset.split(":", 1)[0]]  # the same table the training pipeline reads


def layer_channels(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every conv and linear layer of the model: its type and channels (in, out), as pruned."""
    layers: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            layers[name] = {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels}
            layers[name] |= {"kernel": list(module.kernel_size), "stride": list(module.stride), "groups": module.groups}
        elif isinstance(module, nn.Linear):
            layers[name] = {"type": "Linear", "in": module.in_features, "out": module.out_features}
    return layers


# --- export ------------------------------------------------------------------------------------


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The formats asked for, checked (names, and ONNX's packages) before any work."""
    if not formats:
        raise BenchError(f"name at least one export format: {', '.join(FORMATS)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise unknown_name("export format", fmt, FORMATS)
    if "onnx" in formats:
        check_onnx()
    return tuple(dict.fromkeys(formats))


def check_onnx() -> None:
    """ONNX export needs onnx and onnxscript (torch's dynamo exporter); BenchError naming what is missing."""
    import importlib.util

    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchError(
            f"--format onnx needs the package(s) {', '.join(missing)}: install them with "
            f"'uv sync --extra onnx' (or 'uv pip install {' '.join(missing)}'); safetensors and pt2 need nothing more"
        )


def export(
    run_id: str,
    formats: Sequence[str],
    out: str | Path,
    tracking_uri: str | None = None,
    results_dir: str | Path = "results",
) -> list[Path]:
    """Write the run's model in each format under ``out``, with its metadata JSON; returns the paths."""
    formats = check_formats(formats)
    stored = read_stored(run_id, tracking_uri, results_dir)
    model = rebuild(stored)
    meta = metadata(stored, model)
    base = Path(out) / file_stem(stored)
    from bench.atomic import atomic_write_text

    atomic_write_text(json.dumps(meta, indent=1), base.with_suffix(".json"))
    written = [base.with_suffix(".json")]
    for fmt in formats:
        path = base.with_suffix(SUFFIXES[fmt])
        WRITERS[fmt](model, example_input(stored.input_size), meta, path)
        written.append(path)
    return written


def file_stem(stored: StoredModel) -> str:
    """``resnet56-l1-s0-1a2b3c4d``: model, method, seed and the run id's first 8 digits."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stored.model)
    return f"{name}-{stored.method}-s{stored.seed}-{stored.run_id[:8]}"


def write_safetensors(model: nn.Module, example: torch.Tensor, meta: Mapping[str, Any], path: Path) -> None:
    """The state dict, every tensor contiguous, with the metadata as JSON under the header key ``bench``."""
    from safetensors.torch import save

    from bench.atomic import atomic_write

    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    blob = save(tensors, metadata={"bench": json.dumps(meta)})
    atomic_write(path, lambda file: file.write(blob))


def exported_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of the eval-mode model, its batch dimension dynamic."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))


def write_pt2(model: nn.Module, example: torch.Tensor, meta: Mapping[str, Any], path: Path) -> None:
    """A ``torch.export`` program, the metadata as the extra file ``bench.json``."""
    from bench.atomic import atomic_write

    program = exported_program(model, example)
    atomic_write(path, lambda file: torch.export.save(program, file, extra_files={"bench.json": json.dumps(meta)}))


def write_onnx(model: nn.Module, example: torch.Tensor, meta: Mapping[str, Any], path: Path) -> None:
    """ONNX by torch's dynamo exporter, input ``input`` and output ``logits``, batch dynamic."""
    check_onnx()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            verbose=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(tmp))
    os.replace(tmp, path)


WRITERS = {"safetensors": write_safetensors, "pt2": write_pt2, "onnx": write_onnx}


# --- the MLflow model --------------------------------------------------------------------------


def log_mlflow_model(model: nn.Module, run_id: str, example: torch.Tensor, client: MlflowClient) -> str | None:
    """Log ``model`` as an MLflow model (MLflow's ``pt2`` format: a ``torch.export`` program, loadable
    without bench) under the run's artifact ``model``, with its signature and input example; returns
    None, or why it could not (also printed as a warning): a model ``torch.export`` cannot trace must
    not fail the run that trained it.

    Uses the run's client, not MLflow's global active run: the run may be open or finished. A CPU copy
    in eval mode is exported (the caller's model stays where it is). The torch and numpy pins are given,
    so MLflow does not infer requirements (that loads the model in a subprocess: about 20 s).
    """
    import copy

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / MLFLOW_MODEL
            _save_mlflow_model(copy.deepcopy(model).cpu().eval(), example.detach().cpu().float(), local)
            client.log_artifacts(run_id, str(local), MLFLOW_MODEL)
    except Exception as exc:  # torch.export and MLflow raise many kinds; the run's result stands regardless
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        print(f"warning: the MLflow model of run {run_id} was not logged ({reason})", file=sys.stderr)
        return reason
    return None


def _save_mlflow_model(model: nn.Module, x: torch.Tensor, local: Path) -> None:
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import infer_signature

    with torch.no_grad():
        y = model(x)
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    with (
        quiet_logger("mlflow.utils.environment", logging.ERROR),
        warnings.catch_warnings(),
    ):  # a uv environment has no pip
        # torch's pt2 packager warns that weights not on the CPU may misload; the copy saved is on the CPU
        warnings.filterwarnings("ignore", "No complete tensor found", UserWarning)
        mlflow.pytorch.save_model(
            model,
            str(local),
            signature=infer_signature(x.numpy(), y.numpy()),
            input_example=x.numpy(),
            pip_requirements=pins,
            serialization_format="pt2",
        )
