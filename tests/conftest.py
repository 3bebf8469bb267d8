"""Shared fixtures. Datasets come from BENCH_DATA_DIR or --data-dir (CI sets ../shared/data).

Outside CI a missing dataset is a skip with a reason; inside CI (CI=true) it is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--data-dir", default=None, help="root holding the real datasets (cifar10-jpeg/ ...)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of small forwards: on a busy 2-core machine OpenMP spin-waits
    make 2 threads many times slower (measured: a batch-2 resnet20 forward, 5 ms vs 850 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir(pytestconfig: pytest.Config) -> Path:
    """The real data root; skips (or fails in CI) when it is missing."""
    raw = pytestconfig.getoption("--data-dir") or os.environ.get("BENCH_DATA_DIR")
    if raw and Path(raw).is_dir():
        return Path(raw).resolve()
    reason = f"real datasets not found (BENCH_DATA_DIR={raw!r}); set BENCH_DATA_DIR or --data-dir"
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cifar_root(data_dir: Path) -> Path:
    """Data root that holds the CIFAR-10 JPEG copy."""
    if not (data_dir / "cifar10-jpeg").is_dir():
        pytest.fail(f"{data_dir} has no cifar10-jpeg/")
    return data_dir


@pytest.fixture(scope="session")
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decoded-tensor cache per test session, so the JPEGs are decoded once."""
    override = os.environ.get("BENCH_TEST_CACHE")
    if override:
        Path(override).mkdir(parents=True, exist_ok=True)
        return Path(override)
    return tmp_path_factory.mktemp("dataset-cache")
