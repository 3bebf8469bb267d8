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
    """Return the valid name closest to ``name``, or None when nothing is reasonably close: difflib's
    candidates, the fewest typos first (``resnet21`` is one edit from resnet20 and two from resnet32,
    which difflib scores alike), then difflib's order."""
    matches = difflib.get_close_matches(name, list(valid), n=5, cutoff=0.5)
    if not matches:
        return None
    return min(matches, key=lambda m: (edit_distance(name, m), matches.index(m)))


def edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of adjacent characters turning ``a`` into ``b``
    (optimal string alignment distance)."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            cost = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, rows[-2][j - 2] + 1)
            row.append(cost)
        rows.append(row)
    return rows[-1][-1]


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
