"""The speed benchmark runs and reports its fields. No timing is asserted: the benchmark prints
ratios, and its targets are checked by reading its output, not by tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.benchmarks.speed import speed
from bench.benchmarks.speed_text import format_speed

pytestmark = pytest.mark.slow

TRAIN_FIELDS = {
    "ours_ms_per_step",
    "bare_ms_per_step",
    "ratio_ours_over_bare",
    "target_max_ratio",
    "model",
    "batch_size",
    "steps",
    "repeats",
}
DATA_FIELDS = {
    "ours_images_per_s",
    "imagefolder_dataloader_images_per_s",
    "pil_arrays_dataloader_images_per_s",
    "ratio_ours_over_imagefolder",
    "ratio_ours_over_pil_arrays",
    "target_min_ratio",
    "images",
    "workers",
}
FFR_FIELDS = {
    "ffr_ms_per_step",
    "plain_ms_per_step",
    "ratio_ffr_over_plain",
    "target_max_ratio",
    "model",
    "batch_size",
    "steps",
    "repeats",
    "memory_format",
    "ffr_params",
    "ffr_kernel",
    "ffr_compile_after_steps",
    "ffr_eager_ms_per_step",
    "ratio_ffr_eager_over_plain",
}


def test_speed_report_has_every_field(cifar_root, dataset_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_DATASET_CACHE", str(dataset_cache))
    report = speed(
        "resnet20",
        "cpu",
        32,
        steps=2,
        repeats=1,
        images=128,
        workers=0,
        data_dir=str(cifar_root),
        results_dir=str(tmp_path),
        ffr_model="resnet20",
        latency_repeats=2,
    )
    assert set(report["train_step"]) >= TRAIN_FIELDS
    latency = report["latency"]
    assert [row["variant"] for row in latency["rows"]][:2] == ["dense", "l1 50% FLOPs"]
    for row in latency["rows"]:
        for batch in (1, 64):
            cell = row[f"batch_{batch}"]
            assert cell["median_ms"] > 0 and cell["batch_size"] == batch and cell["repeats"] == 2
            expected = 1.0 if row["variant"] == "dense" else cell["speedup"] / row["flops_ratio"]
            assert cell["efficiency"] == pytest.approx(expected)
    assert report["train_step"]["images_per_s"]["dataloader"] > 0
    assert set(report["data_pipeline"]) >= DATA_FIELDS
    assert report["train_step"]["ratio_ours_over_bare"] > 0
    assert report["data_pipeline"]["ours_images_per_s"] > 0
    assert "cifar10-jpeg" in report["data_source"]
    ffr = report["ffr_overhead"]
    assert set(ffr) >= FFR_FIELDS
    assert ffr["model"] == "resnet20" and ffr["steps"] == 2 and ffr["target_max_ratio"] == 1.15
    assert ffr["ffr_ms_per_step"] > 0 and ffr["plain_ms_per_step"] > 0
    assert ffr["ratio_ffr_over_plain"] == pytest.approx(ffr["ffr_ms_per_step"] / ffr["plain_ms_per_step"])
    assert ffr["ffr_params"]["align"] == "shortcut"
    text = format_speed(report)
    assert "ratio ours/bare" in text and "ImageFolder+DataLoader" in text and "ratio ffr/plain" in text
    assert "(c) inference latency" in text and "DataLoader loop (Torch-Pruning style" in text


def test_speed_cli_json(cifar_root, dataset_cache, tmp_path):
    env_args = {"BENCH_DATASET_CACHE": str(dataset_cache)}
    import os

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "speed",
            "--device",
            "cpu",
            "--batch-size",
            "32",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--images",
            "64",
            "--workers",
            "0",
            "--ffr-model",
            "resnet20",
            "--latency-repeats",
            "1",
            "--data-dir",
            str(cifar_root),
            "--results-dir",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env_args},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert set(report["train_step"]) >= TRAIN_FIELDS and set(report["data_pipeline"]) >= DATA_FIELDS
    assert set(report["ffr_overhead"]) >= FFR_FIELDS and report["ffr_overhead"]["model"] == "resnet20"
    sections = {"train_step", "data_pipeline", "latency", "ffr_overhead"}
    assert set(report["seconds"]) == set(report["estimated_seconds"]) == sections  # measured and estimated
    assert "(a) training step" in proc.stderr and "(d) FFR overhead" in proc.stderr  # the text, as it came
