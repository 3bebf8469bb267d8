"""Layers point one way (bench/README.md, "Layers"). Read from the source files' syntax trees, so a
violation is named by file, line and import even when the module would not import at all:

- a plugin in ``methods/`` imports only the public plugin surface ``bench.api``, ``bench.errors``,
  torch and the standard library, and never another plugin;
- the ``bench/`` core never imports ``reports`` or a plugin (``methods``); only the presentation layer
  (the CLI package ``bench/cli/`` and the Python API ``bench/notebook.py``) presents results and may
  import ``reports``;
- ``reports/`` never loads torch, neither directly nor through a bench module it imports (checked on
  the syntax trees, and by importing the report modules in a fresh interpreter).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SURFACE = ("bench.api", "bench.errors")
TORCH_TOPS = {"torch", "torchvision", "timm"}  # importing any of these loads torch
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
REPORT_MODULES = ("reports.source", "reports.report")


@dataclass(frozen=True)
class Import:
    """One imported module, where it is imported, and whether that happens when the file is imported."""

    module: str
    line: int
    at_import: bool  # module level (not in a function body, not under ``if TYPE_CHECKING``)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(module: str) -> Path | None:
    """The source file of a module of this repository, or None for anything installed."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` names, with relative imports resolved against ``package``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """Every module an import statement loads: ``from bench import errors`` loads ``bench.errors``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _absolute(node, package)
    submodules = [f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}") is not None]
    return submodules or [base]


def imports(path: Path, module: str | None = None) -> list[Import]:
    """Every import in ``path`` (the source of ``module``, by default the repository's name for it)."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(Import(m, node.lineno, at_import) for m in _targets(node, package))
        lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        typing_only = isinstance(node, ast.If) and _is_type_checking(node)
        for child in ast.iter_child_nodes(node):
            inside_if_body = typing_only and child in node.body
            visit(child, at_import and not lazy and not inside_if_body)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def py_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


# --- (a) plugins import only the public surface ---------------------------------------------------


def plugin_import_allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top == "methods":
        return False  # a plugin never imports another plugin
    return module in PLUGIN_SURFACE or top == "torch" or top in STDLIB


@pytest.mark.parametrize("path", py_files("methods"), ids=rel)
def test_a_plugin_imports_only_bench_api_bench_errors_torch_and_stdlib(path: Path) -> None:
    bad = [f"{rel(path)}:{i.line} imports {i.module}" for i in imports(path) if not plugin_import_allowed(i.module)]
    assert not bad, (
        "a plugin may import only bench.api, bench.errors, torch and the standard library "
        "(shared code goes to bench.importance, exported by bench.api):\n" + "\n".join(bad)
    )


# --- (b) the core imports neither reports nor a plugin ---------------------------------------------


PRESENTATION = ("bench.cli", "bench.notebook")  # the CLI package, and the Python API for notebooks


def is_presentation(name: str) -> bool:
    return any(name == top or name.startswith(f"{top}.") for top in PRESENTATION)


def core_files() -> Iterator[Path]:
    for path in py_files("bench"):
        if not is_presentation(module_name(path)):
            yield path


def test_b_bench_core_imports_neither_reports_nor_methods() -> None:
    bad = [
        f"{rel(path)}:{i.line} imports {i.module}"
        for path in core_files()
        for i in imports(path)
        if i.module.split(".")[0] in ("reports", "methods")
    ]
    assert not bad, (
        "bench/ may not import reports or a plugin; only the CLI package bench/cli/ and the Python API "
        "bench/notebook.py present results:\n" + "\n".join(bad)
    )


# --- (c) reports never load torch --------------------------------------------------------------------


def torch_chain(path: Path, seen: set[Path]) -> list[str] | None:
    """The import chain by which importing ``path`` loads torch (module-level imports, followed through
    this repository's modules and their parent packages), or None."""
    seen.add(path)
    for i in imports(path):
        if not i.at_import:
            continue
        if i.module.split(".")[0] in TORCH_TOPS:
            return [f"{rel(path)}:{i.line} imports {i.module}"]
        parts = i.module.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c imports a and a.b first
            target = module_file(".".join(parts[:depth]))
            if target is None or target in seen:
                continue
            chain = torch_chain(target, seen)
            if chain is not None:
                return [f"{rel(path)}:{i.line} imports {i.module}", *chain]
    return None


@pytest.mark.parametrize("path", py_files("reports"), ids=rel)
def test_c_reports_do_not_import_torch_even_through_bench(path: Path) -> None:
    chain = torch_chain(path, set())
    assert chain is None, "reports/ must stay torch-free; importing it loads torch via:\n  " + "\n  ".join(chain)


def test_c_importing_the_report_modules_does_not_load_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {REPORT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(name); break\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not done.stdout.strip(), f"importing {done.stdout.strip()} loaded torch"


# --- the checker itself --------------------------------------------------------------------------------


def test_the_checker_sees_lazy_typing_only_relative_and_submodule_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import torch.nn\n"
        "from bench import errors\n"
        "from . import l1\n"
        "if TYPE_CHECKING:\n"
        "    from bench.config import Schedule\n"
        "def f():\n"
        "    from reports import tables\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = {i.module: i.at_import for i in imports(path, "methods.probe")}
    assert found == {
        "typing": True,
        "torch.nn": True,
        "bench.errors": True,
        "methods.l1": True,
        "bench.config": False,
        "reports.tables": False,
    }
    assert [m for m in found if not plugin_import_allowed(m)] == ["methods.l1", "bench.config", "reports.tables"]


def test_every_name_of_the_plugin_surface_resolves() -> None:
    import bench.api

    missing = [name for name in bench.api.__all__ if not hasattr(bench.api, name)]
    assert not missing, f"bench.api.__all__ names what bench.api does not define: {missing}"
