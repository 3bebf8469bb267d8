"""The method registry (DESIGN.md principle 3): one entry-point mechanism for built-ins and real
third-party plugins; unknown names suggest the closest; duplicates are errors; a broken plugin is a
warning when listing and an error only when asked for.

Third-party plugins here are real installed distributions: a package plus a ``*.dist-info`` folder
with METADATA and entry_points.txt, put on ``sys.path`` exactly as pip would leave them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from bench import registry
from bench.api import Method
from bench.errors import BenchError

MINE_SOURCE = '''
"""A third-party method: random scores, reproducible through the harness's seeded generator."""
from dataclasses import dataclass

import torch

from bench.api import Method


@dataclass(frozen=True)
class MineConfig:
    scale: float = 1.0


class Mine(Method):
    name = "mine"
    description = "random channel scores (a third-party test plugin)"
    Config = MineConfig

    def importance(self, model, ctx):
        return {u.name: self.config.scale * torch.rand(u.channels, generator=ctx.generator) for u in ctx.units}
'''

PLUGIN_MODULES = ("thirdparty_bench_plugin", "thirdparty_dup", "thirdparty_broken", "thirdparty_notamethod")


def install_plugin(root: Path, dist: str, module: str, source: str, entry_points_txt: str) -> Path:
    """Write ``module`` (a package) and a ``<dist>-0.1.dist-info`` beside it under ``root``."""
    package = root / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points_txt))
    return root


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Every test leaves the normal registry behind: no plugin modules, no cached entry points."""
    registry.refresh()
    yield
    for name in PLUGIN_MODULES:
        sys.modules.pop(name, None)
    registry.refresh()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mine_root(tmp_path: Path) -> Path:
    return install_plugin(
        tmp_path / "site",
        "thirdparty_bench_plugin",
        "thirdparty_bench_plugin",
        MINE_SOURCE,
        "[bench.methods]\nmine = thirdparty_bench_plugin:Mine\n",
    )


# --- built-ins ----------------------------------------------------------------------------------


def test_builtins_are_registered_through_entry_points() -> None:
    found = {ep.name: ep.value for ep in entry_points(group=registry.GROUP)}
    assert found["l1"] == "methods.l1:L1Norm"
    assert found["slim"] == "methods.slim:NetworkSlimming"
    from methods.l1 import L1Norm
    from methods.slim import NetworkSlimming

    assert registry.get_method("l1") is L1Norm
    assert registry.get_method("slim") is NetworkSlimming
    assert {"l1", "slim"} <= set(registry.method_names())
    assert registry.method_names() == sorted(registry.method_names())


def test_list_methods_gives_one_line_descriptions() -> None:
    listing = registry.list_methods()
    assert {"l1", "slim"} <= set(listing)
    assert "Li et al." in listing["l1"] and "Liu et al." in listing["slim"]
    assert all(text and "\n" not in text for text in listing.values())


def test_create_method_passes_params() -> None:
    method = registry.create_method("l1", {"normalize": "none"})
    assert method.config.normalize == "none"
    assert registry.create_method("slim").config.lam is None


def test_unknown_name_suggests_the_closest_and_lists_valid_names() -> None:
    with pytest.raises(BenchError) as err:
        registry.get_method("l2")
    message = str(err.value)
    assert "unknown method 'l2'" in message
    assert "Did you mean 'l1'?" in message
    assert "Valid methods: " in message and "l1" in message and "slim" in message
    with pytest.raises(BenchError, match="Did you mean 'slim'"):
        registry.create_method("slimm")


def test_unknown_name_far_from_everything_lists_without_a_guess() -> None:
    with pytest.raises(BenchError, match=r"unknown method 'zzzzzzzz'\. Valid methods: ") as err:
        registry.get_method("zzzzzzzz")
    assert "Did you mean" not in str(err.value)


# --- a real third-party plugin -----------------------------------------------------------------


def test_refresh_picks_up_a_newly_installed_plugin(mine_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "mine" not in registry.method_names()  # caches the entry points
    monkeypatch.syspath_prepend(str(mine_root))
    assert "mine" not in registry.method_names()  # still the cached view
    registry.refresh()
    assert "mine" in registry.method_names()


def test_third_party_plugin_is_listed_and_loadable(mine_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(mine_root))
    registry.refresh()
    assert {"l1", "mine", "slim"} <= set(registry.method_names())
    assert registry.list_methods()["mine"] == "random channel scores (a third-party test plugin)"
    cls = registry.get_method("mine")
    assert issubclass(cls, Method) and cls.__module__ == "thirdparty_bench_plugin"
    method = registry.create_method("mine", {"scale": 2.0})
    assert method.config.scale == 2.0
    with pytest.raises(BenchError, match=r"unknown parameter 'scal' for method 'mine'.*Did you mean 'scale'"):
        registry.create_method("mine", {"scal": 2.0})


def test_third_party_plugin_passes_the_conformance_kit(mine_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(mine_root))
    registry.refresh()
    from bench.testing import check_method

    check_method("mine")


def test_cli_lists_a_third_party_plugin(mine_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(mine_root), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "list", "methods"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert {"l1", "mine", "slim"} <= set(names)
    assert "random channel scores" in result.stdout


# --- duplicates and broken plugins --------------------------------------------------------------


def test_a_name_registered_twice_is_an_error_naming_both_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = install_plugin(
        tmp_path,
        "thirdparty-dup",
        "thirdparty_dup",
        "class Other:\n    pass\n",
        "[bench.methods]\nl1 = thirdparty_dup:Other\n",
    )
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    for call in (registry.method_names, registry.list_methods, lambda: registry.get_method("slim")):
        with pytest.raises(BenchError, match="registered twice") as err:
            call()
        message = str(err.value)
        assert "'l1'" in message and "thirdparty_dup:Other" in message and "methods.l1:L1Norm" in message


def test_the_same_target_registered_twice_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = install_plugin(tmp_path, "thirdparty-dup", "thirdparty_dup", "", "[bench.methods]\nl1 = methods.l1:L1Norm\n")
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    from methods.l1 import L1Norm

    assert registry.get_method("l1") is L1Norm


def test_a_broken_plugin_warns_when_listing_and_fails_when_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = "raise ImportError('thirdparty_broken needs libfoo, which is not installed')\n"
    root = install_plugin(
        tmp_path,
        "thirdparty-broken",
        "thirdparty_broken",
        source,
        "[bench.methods]\nbroken = thirdparty_broken:Broken\n",
    )
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    assert "broken" in registry.method_names()
    with pytest.warns(UserWarning, match=r"method plugin 'broken' \(thirdparty_broken:Broken\) failed to load.*libfoo"):
        listing = registry.list_methods()
    assert {"l1", "slim", "broken"} <= set(listing)
    assert "broken plugin" in listing["broken"]
    assert "Li et al." in listing["l1"]  # the others are listed normally
    with pytest.raises(BenchError, match=r"method plugin 'broken' \(thirdparty_broken:Broken\) failed to load.*libfoo"):
        registry.get_method("broken")
    assert registry.get_method("slim").name == "slim"  # asking for another method still works


def test_a_plugin_that_is_not_a_method_subclass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = install_plugin(
        tmp_path,
        "thirdparty-notamethod",
        "thirdparty_notamethod",
        "def scores():\n    return {}\n",
        "[bench.methods]\nnotamethod = thirdparty_notamethod:scores\nmissing = thirdparty_notamethod:Missing\n",
    )
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    with pytest.raises(BenchError, match=r"'notamethod' \(thirdparty_notamethod:scores\) is not a bench.api.Method"):
        registry.get_method("notamethod")
    with pytest.raises(BenchError, match=r"'missing' \(thirdparty_notamethod:Missing\) failed to load"):
        registry.get_method("missing")
    with pytest.warns(UserWarning) as record:
        listing = registry.list_methods()
    assert len(record) == 2 and {"l1", "slim"} <= set(listing)
