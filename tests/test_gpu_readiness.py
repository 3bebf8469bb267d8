"""The GPU readiness script's parts that need no GPU: the fail-fast checks, ``--check``'s plan,
the test counts it reads from a real pytest JUnit report, a step that overruns its timeout, and
(slow) every step end to end on the CPU at toy sizes. The GPU figures themselves are measured
only where a GPU is (``scripts/gpu_check.sh``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.benchmarks.gpu_readiness import BUDGET_S, TIMEOUTS_S, junit_counts, run_step

MODULE = [sys.executable, "-m", "bench.benchmarks.gpu_readiness"]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*MODULE, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_fails_fast_with_one_line(cifar_root: Path) -> None:
    start = time.monotonic()
    proc = _run(["--data-dir", str(cifar_root)])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: no CUDA device (torch ") and "--check" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and time.monotonic() - start < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", "/no/such/dir"], "no CIFAR-10 under /no/such/dir"),
        (["--device", "cpu"], "--device cpu takes --quick"),
        (["--device", "gpu"], "invalid choice: 'gpu'"),
    ],
)
def test_bad_arguments_exit_2_before_any_work(args: list[str], message: str, cifar_root: Path) -> None:
    proc = _run(["--data-dir", str(cifar_root), *args] if "--data-dir" not in args else args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_check_prints_the_plan_within_the_budget(cifar_root: Path) -> None:
    env = {**os.environ, "BENCH_DATA_DIR": str(cifar_root)}
    proc = _run(["--check"], env=env)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["ok"] and plan["device"] == "cuda" and plan["data_dir"] == str(cifar_root.resolve())
    assert " -m pytest -m gpu " in plan["commands"]["tests"]
    assert (
        " -m bench speed --device cuda --json" in plan["commands"]["speed"]
        and "--model resnet56" in plan["commands"]["speed"]
    )
    assert "--step epoch --device cuda" in plan["commands"]["epoch"]
    assert sum(plan["timeouts_s"].values()) == sum(TIMEOUTS_S.values()) <= BUDGET_S - 20  # start-up left over


def test_counts_come_from_a_real_junit_report(tmp_path: Path) -> None:
    (tmp_path / "test_three.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert False\n\n"
        "@pytest.mark.skip(reason='x')\ndef test_skipped():\n    pass\n"
    )
    junit = tmp_path / "report.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "test_three.py"]
    subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=120)
    assert junit_counts(junit) == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1}
    assert junit_counts(tmp_path / "missing.xml") == {}


def test_a_step_past_its_timeout_is_stopped_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child-alive"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').close()"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    start = time.monotonic()
    info, out = run_step([sys.executable, "-c", parent], timeout_s=1, env=dict(os.environ))
    assert info["status"] == "timed out after 1 s" and time.monotonic() - start < 10 and out == ""
    time.sleep(4)
    assert not marker.exists()  # the step's whole process group ended


@pytest.mark.slow
def test_every_step_runs_on_the_cpu_at_toy_sizes_into_one_document(cifar_root, dataset_cache, tmp_path) -> None:
    env = {**os.environ, "BENCH_DATA_DIR": str(cifar_root), "BENCH_DATASET_CACHE": str(dataset_cache)}
    out = tmp_path / "gpu.json"
    proc = _run(["--device", "cpu", "--quick", "--results-dir", str(tmp_path), "--out", str(out)], env, timeout=600)
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert {name: step["status"] for name, step in doc["steps"].items()} == dict.fromkeys(TIMEOUTS_S, "ok"), doc
    assert doc["tests"]["failed"] == doc["tests"]["errors"] == 0
    assert doc["tests"]["skipped" if not torch.cuda.is_available() else "passed"] >= 3  # the gpu-marked tests
    assert doc["speed"]["headline"]["ours_over_bare"] > 0 and doc["speed"]["latency"]["rows"][0]["variant"] == "dense"
    assert doc["epoch"]["train_images"] == 512 and doc["epoch"]["images_per_s"] > 0
    assert doc["torch"] == torch.__version__ and doc["ok"] is True and proc.returncode == 0
