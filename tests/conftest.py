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


# --- PostgreSQL -----------------------------------------------------------------------------------

POSTGRES_ENV = "BENCH_POSTGRES_URL"  # a server .ci/run started; otherwise the fixture starts one


def _postgres_bin() -> Path | None:
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the Debian package's user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1: ``$BENCH_POSTGRES_URL`` if set, else one started here
    from the installed binaries (skipped without them outside CI, a failure in CI)."""
    import subprocess

    url = os.environ.get(POSTGRES_ENV)
    if url:
        yield url
        return
    bindir = _postgres_bin()
    if bindir is None:
        reason = "PostgreSQL is not installed (Debian package postgresql); .ci/run installs it"
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))  # not under pytest's tmp: its parents are root-only
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    run = lambda cmd: subprocess.run(_as_postgres_user(cmd), check=True, capture_output=True, text=True)  # noqa: E731
    run([str(bindir / "initdb"), "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=100"
    run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"])
    try:
        yield f"postgresql://bench@127.0.0.1:{port}/postgres"
    finally:
        run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh database on the server for one test; its URL."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"
