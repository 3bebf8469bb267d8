"""RunConfig: presets, layering (preset < --config TOML < flags < --set), --set parsing, validation,
immutability, hashing and the dict round trip (DESIGN.md principles 4 and 5)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import config
from bench.config import PRESETS, RunConfig, Schedule, from_dict, parse_set, resolve
from bench.errors import BenchError


def write_toml(tmp_path: Path, text: str, name: str = "run.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- presets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_resolves(preset: str) -> None:
    cfg = resolve(preset, None, {"model": "resnet20", "methods": ["l1"]}, [])
    assert isinstance(cfg, RunConfig)
    assert cfg.preset == preset
    assert cfg.methods == ("l1",)
    assert cfg.prune.rule == "target_flops_reduction"
    assert 0 < cfg.prune.target_flops_reduction < 1
    assert cfg.dense.epochs >= 1 and cfg.finetune.epochs >= 1


def test_preset_values_come_from_the_file() -> None:
    smoke = resolve("smoke", None, {}, [])
    assert (smoke.dense.epochs, smoke.dense.batch_size, smoke.dense.schedule) == (2, 64, "cosine")
    assert (smoke.data.train_limit, smoke.data.val_size, smoke.data.test_limit) == (512, 256, 512)
    paper = resolve("paper", None, {}, [])
    assert paper.dense.epochs == 160 and paper.dense.milestones == (0.5, 0.75)
    assert paper.finetune.lr == pytest.approx(0.001) and paper.finetune.schedule == "constant"


def test_a_preset_can_be_a_copied_toml_file(tmp_path: Path) -> None:
    copy = write_toml(tmp_path, config.preset_path("smoke").read_text().replace("epochs = 2", "epochs = 9"), "my.toml")
    cfg = resolve(copy, None, {}, [])
    assert cfg.dense.epochs == 9


def test_unknown_preset_suggests_the_closest() -> None:
    with pytest.raises(BenchError, match=r"unknown preset 'smok'.*Did you mean 'smoke'.*smoke, quick, paper"):
        resolve("smok", None, {}, [])


def test_no_preset_gives_the_dataclass_defaults() -> None:
    cfg = resolve(None, None, {}, [])
    assert cfg == RunConfig()
    assert cfg.prune.target_flops_reduction == config.DEFAULT_TARGET


# --- layering ------------------------------------------------------------------------------------


def test_layering_precedence_preset_file_flags_set(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
model = "vgg16"
experiment = "from-file"

[dense]
epochs = 5
lr = 0.2

[finetune]
epochs = 3
""",
    )
    flags = {"model": "resnet56", "results_dir": str(tmp_path / "res")}
    cfg = resolve("smoke", path, flags, ["dense.epochs=7", "results_dir='from-set'"])
    assert cfg.dense.batch_size == 64  # preset only
    assert cfg.dense.lr == pytest.approx(0.2)  # file beats preset (0.05)
    assert cfg.finetune.epochs == 3  # file beats preset (1)
    assert cfg.finetune.lr == pytest.approx(0.01)  # preset, untouched by the file's [finetune]
    assert cfg.experiment == "from-file"  # file only
    assert cfg.model == "resnet56"  # flags beat file
    assert cfg.dense.epochs == 7  # --set beats file (5) and preset (2)
    assert cfg.results_dir == "from-set"  # --set beats flags
    assert cfg.data.train_limit == 512  # preset survives every layer


def test_later_set_wins_over_earlier_set() -> None:
    cfg = resolve("smoke", None, {}, ["dense.epochs=3", "dense.epochs=4"])
    assert cfg.dense.epochs == 4


@pytest.mark.parametrize(
    ("layer", "rule", "value"),
    [
        ("flags", "plan", "l1-a"),
        ("set", "plan", "l1-a"),
        ("set", "channel_fraction", 0.7),
        ("file", "layer_ratio", 0.3),
    ],
)
def test_a_higher_pruning_rule_replaces_the_presets_target(tmp_path: Path, layer: str, rule: str, value) -> None:
    flags: dict = {}
    sets: list[str] = []
    path = None
    if layer == "flags":
        flags = {"prune": {rule: value}}
    elif layer == "set":
        sets = [f"prune.{rule}={json.dumps(value)}"]
    else:
        path = write_toml(tmp_path, f"[prune]\n{rule} = {json.dumps(value)}\n")
    cfg = resolve("paper", path, flags, sets)  # the paper preset sets target_flops_reduction = 0.5
    assert cfg.prune.rule == rule
    assert getattr(cfg.prune, rule) == value
    assert cfg.prune.target_flops_reduction is None


def test_replacing_the_rule_keeps_other_prune_settings(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[prune]\ntarget_flops_reduction = 0.3\nmin_keep_fraction = 0.1\n")
    cfg = resolve("smoke", path, {}, ["prune.layer_ratio=0.2"])
    assert cfg.prune.rule == "layer_ratio" and cfg.prune.layer_ratio == pytest.approx(0.2)
    assert cfg.prune.min_keep_fraction == pytest.approx(0.1)


def test_a_non_rule_prune_setting_keeps_the_presets_target() -> None:
    cfg = resolve("smoke", None, {}, ["prune.min_keep_fraction=0.25"])
    assert cfg.prune.rule == "target_flops_reduction" and cfg.prune.target_flops_reduction == pytest.approx(0.5)


def test_two_rules_in_one_layer_are_an_error() -> None:
    with pytest.raises(BenchError, match="exactly one pruning rule"):
        resolve("smoke", None, {"prune": {"plan": "l1-a", "channel_fraction": 0.5}}, [])


# --- --set parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("dense.epochs=3", {"dense": {"epochs": 3}}),
        ("dense.lr=0.05", {"dense": {"lr": 0.05}}),
        ("method.slim.params.lam=1e-4", {"method": {"slim": {"params": {"lam": 1e-4}}}}),
        ("deterministic=true", {"deterministic": True}),
        ("amp=false", {"amp": False}),
        ("model=vgg16", {"model": "vgg16"}),  # a bare string needs no quotes
        ("data.root=/data/sets", {"data": {"root": "/data/sets"}}),
        ("experiment='quoted name'", {"experiment": "quoted name"}),
        ('experiment="double"', {"experiment": "double"}),
        ("seeds=[0, 1, 2]", {"seeds": [0, 1, 2]}),
        ("dense.milestones=[0.3,0.6]", {"dense": {"milestones": [0.3, 0.6]}}),
        (" dense.epochs = 4 ", {"dense": {"epochs": 4}}),
        ("experiment=a=b", {"experiment": "a=b"}),  # only the first '=' separates
    ],
)
def test_parse_set_types(item: str, expected: dict) -> None:
    parsed = parse_set(item)
    assert parsed == expected
    leaf, want = parsed, expected
    while isinstance(want, dict):
        (key,) = want
        leaf, want = leaf[key], want[key]
    assert type(leaf) is type(want)


def test_parse_set_values_reach_the_config_with_their_types() -> None:
    cfg = resolve(
        None,
        None,
        {},
        ["dense.epochs=3", "dense.lr=1", "deterministic=true", "model=vgg16", "seeds=[0, 1, 2]", "dense.nesterov=true"],
    )
    assert cfg.dense.epochs == 3 and isinstance(cfg.dense.epochs, int)
    assert cfg.dense.lr == 1.0 and isinstance(cfg.dense.lr, float)  # int widened to float
    assert cfg.deterministic is True and cfg.dense.nesterov is True
    assert cfg.model == "vgg16"
    assert cfg.seeds == (0, 1, 2)


@pytest.mark.parametrize("item", ["foo", "=3", "dense.=3", ".epochs=3", "dense..epochs=3", "  =x"])
def test_malformed_set_is_a_bench_error(item: str) -> None:
    with pytest.raises(BenchError, match=r"malformed --set .*expected key=value"):
        parse_set(item)


@pytest.mark.parametrize(
    ("item", "wrong", "hint"),
    [
        ("dense.epoch=3", "dense.epoch", "dense.epochs"),
        ("modle=vgg16", "modle", "model"),
        ("prune.target_flops=0.3", "prune.target_flops", "prune.target_flops_reduction"),
        ("method.slim.sparsty.epochs=3", "method.slim.sparsty", "method.slim.sparsity"),
    ],
)
def test_unknown_key_suggests_the_closest(item: str, wrong: str, hint: str) -> None:
    with pytest.raises(
        BenchError, match=rf"unknown config key '{wrong}'.*Did you mean '{hint}'\?.*Valid keys: "
    ) as err:
        resolve("smoke", None, {}, [item])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("dense.epochs='many'", "'dense.epochs' must be int"),
        ("dense.epochs=2.5", "'dense.epochs' must be int"),
        ("dense.epochs=true", "'dense.epochs' must be int"),
        ("dense.lr=fast", "'dense.lr' must be float"),
        ("amp=1", "'amp' must be bool"),
        ("dense=3", "'dense' must be a table, got 3"),
    ],
)
def test_wrong_types_are_bench_errors(item: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        resolve(None, None, {}, [item])


# --- TOML files ----------------------------------------------------------------------------------


def test_malformed_toml_names_the_path(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[dense\nepochs = = 3\n", "broken.toml")
    with pytest.raises(BenchError, match="malformed TOML") as err:
        resolve("smoke", path, {}, [])
    assert path in str(err.value)


def test_missing_toml_file_is_a_bench_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(BenchError, match="does not exist") as err:
        resolve(None, missing, {}, [])
    assert missing in str(err.value)


def test_unknown_key_in_a_toml_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[finetune]\nepocs = 3\n")
    with pytest.raises(BenchError, match=r"unknown config key 'finetune.epocs'.*Did you mean 'finetune.epochs'"):
        resolve(None, path, {}, [])


# --- ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("prune.target_flops_reduction=1.0", r"^prune.target_flops_reduction must be in \[0, 1\), got 1.0"),
        ("prune.target_flops_reduction=1.5", r"prune.target_flops_reduction must be in \[0, 1\)"),
        ("prune.target_flops_reduction=-0.1", r"prune.target_flops_reduction must be in \[0, 1\)"),
        ("prune.channel_fraction=1", r"prune.channel_fraction must be in \[0, 1\)"),
        ("prune.layer_ratio=-0.5", r"prune.layer_ratio must be in \[0, 1\)"),
        ("prune.min_keep_fraction=1", r"prune.min_keep_fraction must be in \[0, 1\)"),
        ("dense.epochs=-1", "^dense.epochs must be >= 0, got -1$"),
        ("finetune.epochs=-3", "^finetune.epochs must be >= 0, got -3$"),
        ("dense.batch_size=0", "^dense.batch_size must be >= 1"),
        ("dense.lr=-0.1", "lr must be >= 0"),
        ("dense.momentum=1.0", r"momentum must be in \[0, 1\)"),
        ("dense.schedule=linear", "^dense.schedule must be one of multistep, cosine, constant, got 'linear'"),
        ("dense.milestones=[0.5, 1.5]", "milestones are fractions"),
        ("dense.warmup_epochs=99", r"^dense.warmup_epochs must be in \[0, epochs=2\], got 99"),
        ("seeds=[0, 1, 0]", r"seeds must be unique, got \(0, 1, 0\)"),
        ("seeds=[]", "at least one seed"),
        ("methods=['l1', 'l1']", "methods must be unique"),
        ("device=tpu", "device must be one of auto, cpu, cuda, got 'tpu'"),
        ("data.train_limit=0", "^data.train_limit must be >= 1"),
        ("method.slim.sparsity.lr=-1", "^method.slim.sparsity.lr must be >= 0, got -1"),
        ("sparsity.label_smoothing=1.0", r"^sparsity.label_smoothing must be in \[0, 1\), got 1.0"),
        ("eval_batch_size=0", "^eval_batch_size must be >= 1, got 0"),
    ],
)
def test_out_of_range_values_are_bench_errors(item: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        resolve("smoke", None, {}, [item])


def test_a_range_error_from_flags() -> None:
    with pytest.raises(BenchError, match=r"target_flops_reduction must be in \[0, 1\), got 1.5"):
        resolve("quick", None, {"prune": {"target_flops_reduction": 1.5}}, [])


def test_zero_epochs_is_allowed() -> None:
    assert resolve("smoke", None, {}, ["finetune.epochs=0"]).finetune.epochs == 0


# --- immutability ------------------------------------------------------------------------------


def test_configs_are_frozen() -> None:
    cfg = resolve("smoke", None, {}, [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = "vgg16"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dense.epochs = 100  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.prune.target_flops_reduction = 0.1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.name = "cifar100"  # type: ignore[misc]


# --- hashing -------------------------------------------------------------------------------------


def test_digest_is_stable_across_calls_and_equal_configs() -> None:
    a = resolve("smoke", None, {"model": "resnet20"}, ["method.slim.params.lam=1e-4", "method.slim.params.x=1"])
    b = resolve("smoke", None, {"model": "resnet20"}, ["method.slim.params.x=1", "method.slim.params.lam=1e-4"])
    assert a.digest() == a.digest() == b.digest()
    assert len(a.digest()) == 12 and int(a.digest(), 16) >= 0
    assert from_dict(json.loads(json.dumps(a.to_dict()))).digest() == a.digest()


def test_digest_is_the_same_in_another_process() -> None:
    """No dependence on hash randomisation or dict order: a fresh interpreter gets the same hash."""
    sets = ["method.slim.params.lam=1e-4", "seeds=[2, 0, 1]", "dense.milestones=[0.3, 0.6]"]
    here = resolve("paper", None, {"model": "vgg16", "methods": ["slim", "l1"]}, sets).digest()
    code = (
        "from bench.config import resolve; import sys; "
        f"print(resolve('paper', None, {{'model': 'vgg16', 'methods': ['slim', 'l1']}}, {sets!r}).digest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == here


@pytest.mark.parametrize(
    "item",
    [
        "dense.epochs=3",
        "finetune.lr=0.5",
        "model=vgg16",
        "seeds=[0, 1]",
        "prune.target_flops_reduction=0.4",
        "method.slim.params.lam=1e-3",
        "data.train_limit=100",
    ],
)
def test_digest_changes_with_result_determining_fields(item: str) -> None:
    assert resolve("smoke", None, {}, [item]).digest() != resolve("smoke", None, {}, []).digest()


@pytest.mark.parametrize("item", ["tracking_uri='sqlite:///elsewhere.db'", "experiment=other", "results_dir=/tmp/r"])
def test_digest_ignores_where_results_are_stored(item: str) -> None:
    assert resolve("smoke", None, {}, [item]).digest() == resolve("smoke", None, {}, []).digest()


def test_digest_ignores_the_preset_label_but_not_its_values(tmp_path: Path) -> None:
    """A copied preset with the same values is the same run wherever the copy lives."""
    text = config.preset_path("smoke").read_text()
    same = resolve(write_toml(tmp_path, text, "copy.toml"), None, {}, [])
    assert same.preset != "smoke"
    assert same.digest() == resolve("smoke", None, {}, []).digest()
    edited = resolve(write_toml(tmp_path, text.replace("epochs = 2", "epochs = 3"), "edited.toml"), None, {}, [])
    assert edited.digest() != same.digest()


# --- per-method overrides ------------------------------------------------------------------------


def test_per_method_schedules_and_params() -> None:
    cfg = resolve(
        "paper", None, {"methods": ["l1", "slim"]}, ["method.slim.params.lam=3e-5", "method.l1.params.normalize=none"]
    )
    slim_sparsity = cfg.sparsity_schedule("slim")
    assert (slim_sparsity.epochs, slim_sparsity.batch_size) == (160, 64)
    assert cfg.finetune_schedule("slim").lr == pytest.approx(0.1) and cfg.finetune_schedule("slim").batch_size == 64
    assert cfg.sparsity_schedule("l1") == cfg.dense  # no run-wide sparsity schedule: the dense one
    assert cfg.finetune_schedule("l1") == cfg.finetune
    assert cfg.finetune_schedule("unknown") == cfg.finetune
    assert cfg.method_params("slim") == {"lam": 3e-5}
    assert cfg.method_params("l1") == {"normalize": "none"}
    assert cfg.method_params("other") == {}


def test_run_wide_sparsity_schedule_applies_to_methods_without_their_own() -> None:
    cfg = resolve("smoke", None, {}, ["sparsity.epochs=4", "method.slim.sparsity.epochs=9"])
    assert cfg.sparsity_schedule("l1") == Schedule(epochs=4)
    assert cfg.sparsity_schedule("slim") == Schedule(epochs=9)
    assert cfg.finetune_schedule("slim") == cfg.finetune  # only sparsity was overridden for slim


def test_method_params_is_a_copy() -> None:
    cfg = resolve(None, None, {}, ["method.slim.params.lam=1e-4"])
    cfg.method_params("slim")["lam"] = 1.0
    assert cfg.method_params("slim") == {"lam": 1e-4}


def test_a_method_override_schedule_is_validated() -> None:
    with pytest.raises(BenchError, match="schedule must be one of"):
        resolve("paper", None, {}, ["method.slim.finetune.schedule=step"])


# --- dict round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", [*PRESETS, None])
def test_to_dict_from_dict_round_trip(preset: str | None) -> None:
    cfg = resolve(
        preset,
        None,
        {"model": "vgg16", "methods": ["l1", "slim"]},
        ["seeds=[0, 1]", "method.slim.params.lam=1e-4", "prune.plan=l1-a", "tracking_uri='sqlite:///x.db'"],
    )
    assert from_dict(cfg.to_dict()) == cfg
    stored = json.loads(json.dumps(cfg.to_dict()))  # how it is stored with a run: tuples become lists
    again = from_dict(stored)
    assert again == cfg and again.digest() == cfg.digest()
    assert again.to_dict() == cfg.to_dict()
