"""User-facing errors: one line saying what was wrong, what was given, and what is valid.

The CLI catches :class:`BenchError`, prints ``error: <message>`` and exits with code 2 without a
traceback. Library code raises it for anything a user can get wrong (names, ranges, paths, files).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """An error caused by user input or the environment, reported without a traceback."""


def closest(name: str, valid: Iterable[str]) -> str | None:
    """Return the valid name closest to ``name``, or None when nothing is reasonably close."""
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> BenchError:
    """Build the error for an unknown registry name: lists the valid names and suggests the closest."""
    valid = sorted(valid)
    hint = closest(name, valid)
    suggestion = f" Did you mean '{hint}'?" if hint else ""
    return BenchError(f"unknown {kind} '{name}'.{suggestion} Valid {kind}s: {', '.join(valid)}.")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty
    (driver and library errors put the useful part first and a traceback-like tail after)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class EarlyStop(Exception):
    """Raised from an epoch callback to end a method run early on purpose (a pruned sweep trial):
    its MLflow run ends KILLED with the reason, not FAILED. Torch-free, so sweeps can subclass it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception, raised by the CLI's handler (``bench.lifecycle``) so that every
    ``with``/``finally`` runs and each open MLflow run ends KILLED with the reason. A subclass of
    KeyboardInterrupt on purpose: whatever handles a Ctrl-C (a run ends KILLED, a sweep stops its
    workers, Optuna fails the trial and re-raises) handles a SIGTERM alike. The CLI exits 143."""
