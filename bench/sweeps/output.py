"""What a sweep prints: every line of a worker carries its worker and trial, and Optuna's own
logging stays quiet unless asked for.

Local workers share the invoking command's stdout and stderr, so their epoch lines would
interleave with nothing to tell them apart. :func:`label_output` wraps a worker's ``sys.stdout``
and ``sys.stderr`` in :class:`PrefixedLines`: each complete line is written with ``[w1 t7] ``
(worker 1, trial 7; ``[w1] `` between trials) in front, in one write, flushed, so the lines of two
processes never mix inside a line. Whatever prints (the training loop's epoch lines, the runner's
messages, warnings, logging) is labelled without knowing it runs in a sweep.
"""

from __future__ import annotations

import io
import logging
import sys
from dataclasses import dataclass
from typing import TextIO

import optuna


@dataclass
class WorkerLabel:
    """The prefix of a worker's lines; ``trial`` is the Optuna trial number it runs, or None."""

    worker: int
    trial: int | None = None

    @property
    def prefix(self) -> str:
        return f"[w{self.worker}] " if self.trial is None else f"[w{self.worker} t{self.trial}] "


class PrefixedLines(io.TextIOBase):
    """A text stream writing each complete line to ``target`` with ``label.prefix`` in front. A
    partial line waits for its newline (a bar's carriage returns included), then goes out whole."""

    def __init__(self, target: TextIO, label: WorkerLabel) -> None:
        super().__init__()
        self.target, self.label, self._pending = target, label, ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        if lines:
            self.target.write("".join(f"{self.label.prefix}{line}\n" for line in lines))
            self.target.flush()
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.target.encoding


def label_output(worker: int) -> WorkerLabel:
    """Prefix every line this process writes to stdout and stderr with the returned label (which
    the trial runner updates); logging handlers already bound to the old streams follow."""
    label = WorkerLabel(worker)
    swap = {id(sys.stdout): PrefixedLines(sys.stdout, label), id(sys.stderr): PrefixedLines(sys.stderr, label)}
    sys.stdout, sys.stderr = swap[id(sys.stdout)], swap[id(sys.stderr)]
    for handler in _stream_handlers():
        if id(handler.stream) in swap:
            handler.setStream(swap[id(handler.stream)])
    return label


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [h for logger in loggers for h in getattr(logger, "handlers", [])]  # placeholders have none
    return [h for h in handlers if isinstance(h, logging.StreamHandler)]


class _QuietTrials(logging.Filter):
    """Optuna's record of a failed trial, in one line without its traceback: the reason is in the
    message (and in the trial's ``bench.error``, and in the sweep's summary). Not logged at all: a
    surplus trial, which ends at once by design (its slot is taken), and the second record Optuna
    writes for every failed trial, "failed with value None" (a raised trial has no value)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "SurplusTrial" in message or message.endswith("failed with value None."):
            return False
        record.exc_info, record.exc_text = None, None
        return True


_QUIET = _QuietTrials()


def optuna_logging(verbose: bool) -> None:
    """Optuna's own log lines (study created, trial finished, ...): WARNING and above, failed
    trials without tracebacks, unless ``verbose`` (then INFO and everything as Optuna logs it).
    Called in every process of a sweep: the command's and each worker's."""
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:  # a handler's filter sees every optuna.* record
        handler.removeFilter(_QUIET)
        if not verbose:
            handler.addFilter(_QUIET)
