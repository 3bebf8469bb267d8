"""Every package that bench/, methods/ and reports/ import is declared in pyproject.toml (scipy and
pyarrow were imported but only installed as someone else's dependency), and torch stays unpinned
(README: a pin that admits the CPU-only local wheel breaks torchvision).

The lower bounds themselves were found by running the suites on a lowest-direct resolution (the
report, allocation, sweep, tracking, registry, plugin and export tests) and by the version that
introduced each API the code calls; pyproject.toml's comments name them."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("bench", "methods", "reports")
PARSE_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the files importing it (absolute imports anywhere in a file)."""
    found: dict[str, set[str]] = {}
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """Distribution names of [project] dependencies and every optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {normalized(PARSE_NAME.match(spec).group(1)) for spec in specs}


def test_every_imported_package_is_declared() -> None:
    third_party = {m: f for m, f in imported_modules().items() if m not in sys.stdlib_module_names and m not in SOURCES}
    distributions = packages_distributions()
    deps = declared()
    missing = []
    for module, files in sorted(third_party.items()):
        dists = {normalized(d) for d in distributions.get(module, [])}
        if not dists & deps:
            missing.append(f"{module} (distribution {sorted(dists) or 'not installed'}; {sorted(files)[0]})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert {"scipy", "torch", "optuna", "mlflow"} <= {normalized(d) for m in third_party for d in distributions[m]}


def test_torch_is_left_unpinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch,) = [spec for spec in project["dependencies"] if PARSE_NAME.match(spec).group(1) == "torch"]
    assert re.fullmatch(r"torch>=[\d.]+", torch.split("#")[0].strip()), torch  # no ==, no <, no +cpu local version
