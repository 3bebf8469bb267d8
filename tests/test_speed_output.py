"""What ``bench speed`` prints, and when: an estimate first, each section as soon as it finishes,
no bar under ``--no-progress`` (the image decode of a first use included), and on Ctrl-C (a real
SIGINT, delivered twice as ``uv run`` does, to a real subprocess) the sections measured so far,
one line saying what was not measured, exit 130 and no traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import datasets

SMALLEST = ["--device", "cpu", "--batch-size", "32", "--steps", "1", "--repeats", "1", "--images", "64",
            "--workers", "0", "--ffr-model", "resnet20", "--latency-repeats", "1"]  # fmt: skip
BAR = re.compile(r"\r|\d+%\|| it/s|img/s\]")  # tqdm's carriage returns, "37%|", rates in brackets


@pytest.fixture(scope="module")
def tiny_cifar_root(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-10 image-folder copy of 1,200 train and 100 test images (links to the real files),
    so that a fresh cache decodes it in a second or two."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    for split, per_class in (("train", 120), ("test", 10)):
        for cls in sorted(p for p in (cifar_root / "cifar10-jpeg" / split).iterdir() if p.is_dir()):
            (root / "cifar10-jpeg" / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:per_class]:
                (root / "cifar10-jpeg" / split / cls.name / f.name).symlink_to(f)
    return root


def _speed(args: list[str], root: Path, cache: Path, results: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench", "speed", *SMALLEST, *args, "--data-dir", str(root)]
    env = {**os.environ, "BENCH_DATASET_CACHE": str(cache)}
    env.pop("PYTHONUNBUFFERED", None)  # a pipe, as `bench speed | tee` gets: the command flushes, not the env
    return subprocess.Popen([*cmd, "--results-dir", str(results)], cwd=results.parent, env=env, text=True, **popen)


def test_decode_bars_follow_the_progress_setting(tiny_cifar_root: Path, tmp_path: Path, capfd) -> None:
    datasets.build("cifar10", tiny_cifar_root, cache_dir=tmp_path / "shown", val_size=100)
    assert "decode cifar10 train" in capfd.readouterr().err  # a first use shows its bars
    datasets.build("cifar10", tiny_cifar_root, cache_dir=tmp_path / "hidden", val_size=100, progress=False)
    out = capfd.readouterr()
    assert "decode" not in out.err + out.out and not BAR.search(out.err + out.out)


@pytest.mark.slow
def test_speed_prints_an_estimate_then_each_section_as_it_finishes_and_no_bar(tiny_cifar_root, tmp_path) -> None:
    """A fresh cache, so the images are decoded here: under --no-progress no bar of any kind."""
    proc = _speed(["--no-progress"], tiny_cifar_root, tmp_path / "cache", tmp_path / "results",
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    arrived = [(time.monotonic(), line) for line in proc.stdout]  # as they come
    assert proc.wait(timeout=60) == 0, "".join(line for _, line in arrived)[-3000:]
    text = "".join(line for _, line in arrived)
    assert not BAR.search(text) and "decode" not in text, text
    lines = [line for _, line in arrived]
    header = next(i for i, line in enumerate(lines) if line.startswith("bench speed on cpu"))
    estimate = lines[header + 1]  # the data are decoded in between, silently
    assert re.match(
        r"estimated time: about .*\(a\) \d+ s, \(b\) \d+ s, \(c\) \d+ s, \(d\) \d+ s\); an estimate", estimate
    )
    heads = [i for i, line in enumerate(lines) if re.match(r"\([abcd]\) ", line)]
    took = {line.split()[0]: t for t, line in arrived if re.match(r" +\([abcd]\) took \d+ s, estimated", line)}
    assert [lines[i][:3] for i in heads] == ["(a)", "(b)", "(c)", "(d)"] and list(took) == ["(a)", "(b)", "(c)", "(d)"]
    after_a = sum(int(re.search(r"took (\d+) s", line)[1]) for line in lines if re.match(r" +\([bcd]\) took", line))
    assert after_a >= 1 and took["(d)"] - took["(a)"] > after_a / 2  # (a) came out while (b)-(d) still ran


@pytest.mark.slow
def test_ctrl_c_after_section_a_keeps_it_and_says_what_was_not_measured(cifar_root, dataset_cache, tmp_path) -> None:
    proc = _speed(["--json", "--no-progress"], cifar_root, dataset_cache, tmp_path / "results",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    before = []
    for line in proc.stderr:  # the sections' text; stdout is the JSON at the end
        before.append(line)
        if re.match(r" +\(a\) took ", line):
            break
    assert before and "(a) took" in before[-1], "".join(before)[-3000:]
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # `uv run` forwards Ctrl-C as the terminal delivers it: twice
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "(a) training step, resnet20" in "".join(before)
    report = json.loads(out)
    assert report["interrupted"] is True and report["train_step"]["ours_ms_per_step"] > 0
    assert "ffr_overhead" not in report and "latency" not in report
    assert report["not_measured"] == [k for k in ("data_pipeline", "latency", "ffr_overhead") if k not in report]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and sum("interrupted" in line for line in lines) == 1, err
    assert lines[-1].startswith("interrupted: measured (a) training step") and "not measured:" in lines[-1]
    assert "(d) FFR overhead" in lines[-1]
    assert "resume" not in err and "again" not in err
