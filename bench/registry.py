"""Method registry fed by the ``bench.methods`` entry-point group, built-ins included.

- An unknown name raises an error that lists the valid names and suggests the closest one.
- A name registered twice (two different targets) is an error.
- A plugin that fails to import is a warning when listing, and an error only when requested.
"""

from __future__ import annotations

import warnings
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from bench.api import Method
from bench.errors import BenchError, unknown_name

GROUP = "bench.methods"


@cache
def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            raise BenchError(
                f"method '{ep.name}' is registered twice in entry-point group '{GROUP}': "
                f"'{found[ep.name].value}' and '{ep.value}'; uninstall one of the plugins"
            )
        found[ep.name] = ep
    return found


def refresh() -> None:
    """Forget cached entry points (after installing a plugin in the same process)."""
    _entry_points.cache_clear()


def method_names() -> list[str]:
    return sorted(_entry_points())


def get_method(name: str) -> type[Method]:
    """The Method class registered as ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise unknown_name("method", name, eps)
    try:
        cls = eps[name].load()
    except Exception as exc:  # a third-party plugin can fail in any way
        raise BenchError(f"method plugin '{name}' ({eps[name].value}) failed to load: {exc!r}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise BenchError(f"method plugin '{name}' ({eps[name].value}) is not a bench.api.Method subclass")
    return cls


def create_method(name: str, params: dict | None = None) -> Method:
    return get_method(name).from_params(params or {})


def list_methods() -> dict[str, str]:
    """name -> one-line description; broken plugins are listed with a warning instead of failing."""
    listing = {}
    for name in method_names():
        try:
            listing[name] = get_method(name).description or "(no description)"
        except BenchError as exc:
            warnings.warn(str(exc), stacklevel=2)
            listing[name] = "(broken plugin: failed to load)"
    return listing
