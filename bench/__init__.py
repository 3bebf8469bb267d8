"""bench: a reproducible benchmark harness for structured pruning of CNNs.

The Python API, for notebooks: ``bench.run(...)`` (``bench run``, returning the results as a
DataFrame), ``bench.report(...)`` (``bench report``'s tables as DataFrames) and
``bench.load_pruned(run_id)`` (a finished run's pruned model). They are loaded on first use, so
``import bench`` (and ``python -m bench``, and every torch-free module such as the reports' readers)
stays as light as before: nothing here imports torch, MLflow or pandas.
"""

from __future__ import annotations

import importlib

_API = {"run": "bench.notebook", "report": "bench.notebook", "Report": "bench.notebook", "load_pruned": "bench.export"}
__all__ = ["Report", "load_pruned", "report", "run"]


def __getattr__(name: str) -> object:
    """``bench.run`` and the rest of the API, imported when first asked for (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'bench' has no attribute '{name}'")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
