"""The shape of the code that the next engineer relies on (bench/README.md): short functions, a
pipeline whose functions take few parameters, and modules that say why when they grow long.

Read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "reports")
PIPELINE = ("runner", "method_run", "baseline", "estimate", "inherit", "session", "run_log")  # bench/<name>.py
MAX_FUNCTION_LINES = 50
MAX_MEDIAN_LINES = 10
MAX_PIPELINE_PARAMS = 5  # besides self / cls
MAX_MODULE_LINES = 400
LONG_MODULE_REASON = "Why this module is long"  # the phrase a long module's docstring must contain


def _sources() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _length(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return len([n for n in names if n not in ("self", "cls")])


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"


def test_no_function_is_over_50_lines_and_the_median_stays_short() -> None:
    nodes = [(path, node) for path in _sources() for node in _functions(path)]
    long = [f"{_where(p, n)} ({_length(n)} lines)" for p, n in nodes if _length(n) > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
    median = statistics.median(_length(n) for _, n in nodes)
    assert median <= MAX_MEDIAN_LINES, f"median function length {median} > {MAX_MEDIAN_LINES}"


def test_pipeline_functions_take_at_most_five_parameters() -> None:
    paths = [ROOT / "bench" / f"{name}.py" for name in PIPELINE]
    many = [
        f"{_where(p, n)} ({_params(n)} parameters)"
        for p in paths
        for n in _functions(p)
        if _params(n) > MAX_PIPELINE_PARAMS
    ]
    assert not many, f"pipeline functions with more than {MAX_PIPELINE_PARAMS} parameters: {many}"


def test_long_modules_say_why_in_their_docstring() -> None:
    unexplained = []
    for path in _sources():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if LONG_MODULE_REASON not in docstring:
                unexplained.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    assert not unexplained, f"modules over {MAX_MODULE_LINES} lines without '{LONG_MODULE_REASON}': {unexplained}"
