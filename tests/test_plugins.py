"""Method plugins as the README writes them: its example plugin, taken from the README itself, runs
through the harness without a warning (the harness detaches scores itself); ``check_method``
prints what it checked and names the check that failed; and, with real ``uv`` on a copy of the
project, the README's install recipe keeps a plugin installed across the set-up command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch

from bench import models, surgery
from bench.api import Context, Method
from bench.config import PruneConfig
from bench.pruning import default_plan
from bench.testing import check_method

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")


def readme_block(language: str, marker: str) -> str:
    """The README's fenced ``language`` block that contains ``marker``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"expected one ```{language} block with {marker!r} in README.md, found {len(found)}"
    return found[0]


def readme_plugin() -> type[Method]:
    """The README's example plugin class, executed as written."""
    module = types.ModuleType("readme_plugin")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(readme_block("python", "class MyMethod(Method)"), "README.md", "exec"), module.__dict__)
    return module.MyMethod


def test_the_readme_plugin_goes_through_allocation_without_a_warning() -> None:
    """Its scores are ``weight.abs().mean(...)``, attached to autograd; allocation converting them
    to floats raised "Converting a tensor with requires_grad=True to a scalar" (a UserWarning)."""
    method = readme_plugin()()
    model = models.create("resnet20", 10, 32)
    units = surgery.prunable_units(model, 32)
    ctx = Context("resnet20", units, torch.device("cpu"), 0, torch.Generator().manual_seed(0), None, 32)
    scores = method.importance(model, ctx)
    assert any(s.requires_grad for s in scores.values())  # the premise: the README returns them attached
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = default_plan(PruneConfig(target_flops_reduction=0.4), "resnet20", model, units, scores,
                            backend=surgery.backend_of(model), input_size=32)  # fmt: skip
    assert plan.keep and all(len(kept) >= 1 for kept in plan.keep.values())


def test_check_method_prints_every_check_and_a_summary() -> None:
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        passed = check_method(readme_plugin(), model="resnet20", say=lines.append)
    text = "\n".join(lines)
    checks = ["registry entry", "config", "hooks", "resnet20 hooks", "resnet20 importance", "resnet20 plan",
              "resnet20 surgery", "resnet20 determinism"]  # fmt: skip
    assert passed == len(checks) == len(lines) - 2, text  # a heading, one line per check, a summary
    for check, line in zip(checks, lines[1:-1], strict=True):
        assert line.startswith(f"  ok    {check}: "), text
    assert "MyConfig is a frozen dataclass (alpha)" in text
    assert "one finite score per channel for each of 9 units" in text and "attached to autograd" in text
    assert "the 40% FLOPs target met" in text and "runs forward and backward" in text
    assert lines[-1] == f"check_method('MyMethod'): all {passed} checks passed"


def test_check_method_checks_the_direct_and_the_depgraph_path_by_default() -> None:
    lines: list[str] = []
    check_method(readme_plugin(), say=lines.append)
    assert any(line.startswith("  ok    resnet20 hooks: ") and "direct surgery" in line for line in lines)
    assert any(line.startswith("  ok    timm:resnet18 hooks: ") and "depgraph surgery" in line for line in lines)
    assert lines[-1].endswith("all 13 checks passed")


def _plugin(name: str, importance, config: type | None = None) -> type[Method]:
    attrs = {"name": name, "description": f"a {name} test plugin", "importance": importance}
    if config is not None:
        attrs["Config"] = config
    return type(name.title(), (Method,), attrs)


@pytest.mark.parametrize(
    ("plugin", "check", "reason"),
    [
        (
            _plugin("short", lambda self, model, ctx: {u.name: torch.ones(u.channels - 1) for u in ctx.units}),
            "resnet20 importance",
            "has shape (15,), expected (16,)",
        ),
        (
            _plugin(
                "nan", lambda self, model, ctx: {u.name: torch.full((u.channels,), float("nan")) for u in ctx.units}
            ),
            "resnet20 importance",
            "non-finite",
        ),
        (
            _plugin("partial", lambda self, model, ctx: {ctx.units[0].name: torch.ones(ctx.units[0].channels)}),
            "resnet20 importance",
            "!= prunable units",
        ),
    ],
    ids=["wrong-shape", "nan", "missing-unit"],
)
def test_a_failing_check_is_named_with_its_reason(plugin: type[Method], check: str, reason: str) -> None:
    lines: list[str] = []
    with pytest.raises(AssertionError, match=re.escape(f"check '{check}' failed")) as failed:
        check_method(plugin, model="resnet20", say=lines.append)
    assert reason in str(failed.value)
    assert lines[-1].startswith(f"  FAIL  {check}: ") and reason in lines[-1]


def test_an_unfrozen_config_fails_the_config_check() -> None:
    from dataclasses import dataclass

    @dataclass
    class Loose:
        a: int = 1

    plugin = _plugin("loose", lambda self, model, ctx: {u.name: torch.ones(u.channels) for u in ctx.units}, Loose)
    with pytest.raises(AssertionError, match=r"check 'config' failed: loose: expected a frozen Config"):
        check_method(plugin, model="resnet20", say=lambda line: None)


# --- installing a plugin with real uv ---------------------------------------------------------

PROJECT_FILES = ("pyproject.toml", "uv.lock", "README.md", "bench", "methods", "reports")


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.skip("uv is not on PATH")
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of this project (what the set-up command needs) beside the README's plugin package."""
    repo = tmp_path / "bench"
    repo.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, repo / name)
    plugin = tmp_path / "my-plugin"
    (plugin / "my_package").mkdir(parents=True)
    (plugin / "my_package" / "__init__.py").write_text("")
    (plugin / "my_package" / "my_module.py").write_text(readme_block("python", "class MyMethod(Method)"))
    entry = readme_block("toml", 'entry-points."bench.methods"')
    (plugin / "pyproject.toml").write_text(
        textwrap.dedent("""\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [tool.hatch.build.targets.wheel]
            packages = ["my_package"]

            [project]
            name = "my-plugin"
            version = "0.1.0"

            """)
        + entry
    )
    return repo


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    drop = {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "MLFLOW_TRACKING_URI"}
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _listed(uv: str, repo: Path, *extra: str) -> bool:
    result = _run([uv, "run", *extra, "python", "-m", "bench", "list", "methods"], repo)
    assert result.returncode == 0, result.stderr[-2000:]
    return any(line.startswith("mine ") for line in result.stdout.splitlines())


@pytest.mark.slow
def test_the_readme_recipe_keeps_a_plugin_across_the_set_up_command(project: Path) -> None:
    """``uv sync --locked --inexact`` keeps a plugin installed with ``uv pip install -e``; the plain
    ``uv sync --locked`` removes it (why the README says --inexact); ``uv run --with-editable``
    brings it back for one command."""
    uv, plugin = _uv(), str(project.parent / "my-plugin")
    for step in (
        ["sync", "--locked", "--inexact"],
        ["pip", "install", "-e", plugin],
        ["sync", "--locked", "--inexact"],
    ):
        result = _run([uv, *step], project)
        assert result.returncode == 0, f"uv {' '.join(step)}:\n{result.stderr[-2000:]}"
    assert _listed(uv, project), "the plugin is gone after `uv sync --locked --inexact`"
    assert _run([uv, "sync", "--locked"], project).returncode == 0
    assert not _listed(uv, project), "plain `uv sync --locked` kept an extraneous package: the README's note is stale"
    assert _listed(uv, project, "--with-editable", plugin)
