"""``python -m bench`` as a user runs it: help, listings, profile figures, and every kind of bad input
ending in one ``error: ...`` line on stderr, exit code 2 and no traceback (DESIGN.md principle 5).

Every command runs in a fresh interpreter with ``cwd=tmp_path`` so nothing lands in the repository;
run-path errors also get ``--results-dir`` and ``--tracking-uri`` under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 300  # s; a cold start of torch + mlflow on a loaded 2-core machine
PYCACHE: dict[str, str] = {}  # the bytecode cache shared by this module's interpreters


@pytest.fixture(autouse=True, scope="module")
def _shared_bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where PYTHONDONTWRITEBYTECODE is set and site-packages has no .pyc files, every interpreter
    recompiles torch, pandas and mlflow (~1.5 s each time); a private cache prefix pays that once."""
    PYCACHE["dir"] = str(tmp_path_factory.mktemp("pycache"))


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    drop = {"BENCH_DATA_DIR", "MLFLOW_TRACKING_URI", "PYTHONDONTWRITEBYTECODE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["OMP_NUM_THREADS"] = "1"  # on a shared 2-core machine OpenMP spin-waits make 2 threads many times slower
    if "dir" in PYCACHE:
        env["PYTHONPYCACHEPREFIX"] = PYCACHE["dir"]
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, exactly one non-empty stderr line starting with 'error:', no traceback; returns the line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    """A ``run`` command line that keeps every store under tmp_path."""
    return [
        "run",
        "--methods",
        "l1",
        "--model",
        "resnet20",
        "--preset",
        "smoke",
        "--results-dir",
        str(tmp_path / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--no-progress",
        *extra,
    ]


# --- help and listings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [[], ["list"], ["profile"], ["run"], ["speed"], ["clean"]], ids=lambda c: c[0] if c else "top"
)
def test_help_exits_0_with_examples(command: list[str], tmp_path: Path) -> None:
    result = bench(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "examples" in result.stdout
    assert "python -m bench" in result.stdout


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("methods", ["l1", "slim"]),
        ("models", ["resnet20", "resnet32", "resnet56", "resnet110", "vgg16", "vgg19", "timm:<name>"]),
        ("datasets", ["cifar10", "cifar100", "tinyimagenet"]),
        ("presets", ["smoke", "quick", "paper"]),
        ("plans", ["l1-a (resnet56)", "l1-b (resnet56)", "l1-a (resnet110)", "l1-b (resnet110)", "l1-a (vgg16)"]),
    ],
)
def test_list(what: str, names: list[str], tmp_path: Path) -> None:
    result = bench("list", what, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in names:
        assert any(line.startswith(name + " ") for line in lines), f"{name!r} not listed:\n{result.stdout}"
    entries = [line for line in lines if line.strip() and not line.startswith(" ")]  # the rest: wrapped text
    assert all(len(line.split(maxsplit=1)) == 2 for line in entries), "every entry has a description"
    assert "Traceback" not in result.stderr


# --- profile -------------------------------------------------------------------------------------


def test_profile_prints_params_and_macs(tmp_path: Path) -> None:
    result = bench("profile", "--model", "resnet56", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "853,018" in result.stdout  # params, BN included
    assert "125,485,696" in result.stdout  # conv+linear MACs for one 32x32 image
    assert "MACs" in result.stdout
    assert not result.stderr.strip(), result.stderr  # no stray warnings
    assert list(tmp_path.iterdir()) == []  # profile writes nothing


@pytest.fixture(scope="module")
def resnet56_l1a(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One invocation serves the plan and the latency tests (each interpreter start costs seconds)."""
    result = bench(
        "profile",
        "--model",
        "resnet56",
        "--plan",
        "l1-a",
        "--latency",
        "--repeats",
        "3",
        "--batch-size",
        "4",
        "--json",
        cwd=tmp_path_factory.mktemp("profile"),
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print one JSON object:\n{result.stdout}"
    return json.loads(lines[0])


def test_profile_resnet56_l1a_json(resnet56_l1a: dict) -> None:
    report = resnet56_l1a
    assert report["model"] == "resnet56" and report["plan"] == "l1-a"
    assert report["dense"] == {"params": 853018, "macs": 125485696}
    assert report["pruned"]["flops_reduction"] == pytest.approx(0.104, abs=0.002)  # Li et al.: 10.4%
    assert report["pruned"]["macs"] < report["dense"]["macs"]


def test_profile_latency_json_has_dense_pruned_and_the_speedup(resnet56_l1a: dict) -> None:
    (latency,) = resnet56_l1a["latency"]  # one entry per batch size
    assert latency["batch_size"] == 4
    dense, pruned = latency["dense"], latency["pruned"]
    assert pruned["plan"] == "l1-a"
    for measured in (dense, pruned):
        assert {"median_ms", "iqr_ms", "batch_size", "device", "threads"} <= set(measured)
        assert measured["median_ms"] > 0 and measured["iqr_ms"] >= 0
        assert measured["batch_size"] == 4 and measured["device"] == "cpu" and measured["threads"] >= 1
        assert measured["repeats"] == 3 and measured["rounds"] == 3  # timed side by side, interleaved
    assert latency["speedup"] == pytest.approx(dense["median_ms"] / pruned["median_ms"])


def test_profile_vgg16_l1a_json(tmp_path: Path) -> None:
    result = bench("profile", "--model", "vgg16", "--plan", "l1-a", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pruned"]["params_reduction"] == pytest.approx(0.640, abs=0.002)  # Li et al.: 64.0%
    assert report["pruned"]["flops_reduction"] == pytest.approx(0.344, abs=0.005)  # Li et al.: 34.2%


# --- bad input: one line, exit 2, no traceback ------------------------------------------------


def test_unknown_model_suggests_the_closest(tmp_path: Path) -> None:
    line = assert_user_error(
        bench("profile", "--model", "resnet57", cwd=tmp_path),
        "unknown model 'resnet57'",
        "Did you mean 'resnet56'?",
        "resnet20",
        "vgg16",
    )
    assert "timm:" in line


def test_named_plan_for_the_wrong_model(tmp_path: Path) -> None:
    assert_user_error(
        bench("profile", "--model", "resnet20", "--plan", "l1-a", cwd=tmp_path),
        "no named plan 'l1-a' for model 'resnet20'",
        "resnet56/l1-a",
    )


def test_argparse_error_is_one_line(tmp_path: Path) -> None:
    assert_user_error(bench("profile", cwd=tmp_path), "--model", "--help")


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--target-flops-reduction", "1.5"], ["target_flops_reduction", "[0, 1)", "1.5"]),
        (["--target-flops-reduction", "-0.1"], ["target_flops_reduction", "[0, 1)", "-0.1"]),
        (["--set", "foo"], ["malformed --set 'foo'", "key=value"]),
        (["--set", "dense.epoch=3"], ["unknown config key 'dense.epoch'", "Did you mean 'dense.epochs'?"]),
        (["--preset", "smok"], ["unknown preset 'smok'", "Did you mean 'smoke'?"]),
        (["--seeds", "0,x"], ["--seeds", "'x'"]),
        (["--methods", ","], ["--methods is empty"]),
        (["--set", "finetune.epochs=-3"], ["finetune.epochs must be >= 0, got -3"]),
    ],
    ids=[
        "target-1.5",
        "target-negative",
        "set-malformed",
        "set-unknown-key",
        "unknown-preset",
        "bad-seeds",
        "no-methods",
        "finetune-range",
    ],
)
def test_bad_run_settings(extra: list[str], fragments: list[str], tmp_path: Path) -> None:
    assert_user_error(bench(*run_args(tmp_path, *extra), cwd=tmp_path), *fragments)
    assert not (tmp_path / "results").exists() and not (tmp_path / "m.db").exists()


def test_malformed_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[dense\nepochs = = 3\n")
    assert_user_error(bench(*run_args(tmp_path, "--config", str(path)), cwd=tmp_path), "malformed TOML", str(path))


def test_missing_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert_user_error(bench(*run_args(tmp_path, "--config", str(path)), cwd=tmp_path), str(path), "does not exist")


def test_unknown_method(tmp_path: Path) -> None:
    args = run_args(tmp_path)
    args[args.index("--methods") + 1] = "l1,slimm"
    assert_user_error(bench(*args, cwd=tmp_path), "unknown method 'slimm'", "Did you mean 'slim'?", "l1")


def test_unknown_method_param_fails_before_any_work(tmp_path: Path) -> None:
    args = run_args(tmp_path, "--set", "method.l1.params.normalise=1")
    assert_user_error(bench(*args, cwd=tmp_path), "unknown parameter 'normalise' for method 'l1'", "normalize")
    assert not (tmp_path / "results").exists()


def test_unknown_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    result = bench(*run_args(tmp_path, "--dataset", "cifar11", "--data-dir", str(empty)), cwd=tmp_path)
    assert_user_error(result, "cifar11", "cifar10")


def test_missing_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "empty-data"
    empty.mkdir()
    line = assert_user_error(bench(*run_args(tmp_path, "--data-dir", str(empty)), cwd=tmp_path))
    assert str(empty) in line or "cifar10" in line.lower(), line


def test_unwritable_results_dir(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("a regular file, so no directory can be created under it (root ignores chmod)")
    args = run_args(tmp_path, "--data-dir", str(tmp_path))
    args[args.index("--results-dir") + 1] = str(afile / "results")
    assert_user_error(bench(*args, cwd=tmp_path), "results dir", str(afile / "results"), "--results-dir")
