"""What a CLI command guarantees however it ends: no MLflow run it opened is left RUNNING.

Two mechanisms, both installed by ``command()`` for the duration of one command:

- SIGTERM raises ``Terminated`` (a KeyboardInterrupt). Python's default for SIGTERM ends the process
  at once and skips every ``finally``, so a run stopped by a scheduler, ``timeout`` or ``kill`` stayed
  RUNNING forever; as an exception, each run's ``ended_on_failure`` ends it KILLED with the reason.
- The safety net: when the command raises, every run it started and did not end (a code path
  without its own context manager) ends FAILED or KILLED with the exception's repr.

A command that returns keeps its open runs: a sweep's parent stays RUNNING on purpose while other
machines' trials run. Torch- and MLflow-free: ``bench.tracking`` is consulted only when it was
imported, since no run can be open before.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from bench.errors import Terminated

SIGTERM_EXIT = 128 + signal.SIGTERM  # 143: the shell's code for a process ended by SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT  # 130: ... by Ctrl-C
_OWNER = -1  # the pid of the process running the command: the only one that raises Terminated


@contextmanager
def command() -> Iterator[None]:
    """Run one command with SIGTERM as ``Terminated``; on any exception, end the MLflow runs the
    command left open (runs open before it are not its own), then propagate. The previous SIGTERM
    handler is restored afterwards."""
    global _OWNER
    on_main_thread = threading.current_thread() is threading.main_thread()  # elsewhere Python cannot
    _OWNER = os.getpid()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    before = _open_runs()
    try:
        yield
    except BaseException as exc:
        _end_left_open(exc, before)
        raise
    finally:
        if on_main_thread:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    """The handler. A second SIGTERM, while the first one's cleanup runs, ends the process at once.
    A process forked inside the command (a decode pool or data loader worker) inherits the handler
    but not the command: it dies of the signal as usual (raising there, inside a queue's lock, left
    the lock held and hung the parent's pool)."""
    signal.signal(signum, signal.SIG_DFL)
    if os.getpid() != _OWNER:
        os.kill(os.getpid(), signum)
        return
    raise Terminated(f"stopped by {signal.Signals(signum).name}")


def _open_runs() -> frozenset[str]:
    tracking = sys.modules.get("bench.tracking")
    return tracking.open_runs() if tracking is not None else frozenset()


def _end_left_open(exc: BaseException, before: frozenset[str]) -> None:
    tracking = sys.modules.get("bench.tracking")
    if tracking is not None:
        tracking.end_open_runs(tracking.ending(exc), repr(exc), keep=before)
