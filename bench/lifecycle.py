"""What a CLI command guarantees however it ends: no MLflow run it opened is left RUNNING, and a
Ctrl-C or SIGTERM ends it once, with one line and no traceback.

Three mechanisms, all installed by ``command()`` for the duration of one command:

- SIGTERM raises ``Terminated`` (a KeyboardInterrupt). Python's default for SIGTERM ends the process
  at once and skips every ``finally``, so a run stopped by a scheduler, ``timeout`` or ``kill`` stayed
  RUNNING forever; as an exception, each run's ``ended_on_failure`` ends it KILLED with the reason.
- The first SIGINT raises KeyboardInterrupt, once. Then the process is stopping: further SIGINTs are
  ignored and a further SIGTERM ends it at once. ``uv run`` forwards a Ctrl-C to its child while the
  terminal sends it to the whole process group, so one Ctrl-C arrives twice; Python's default handler
  raised the second one inside the first one's cleanup (ending MLflow runs, or an atexit handler of
  mlflow, torch or multiprocessing: ``Exception ignored in atexit callback ... KeyboardInterrupt``).
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from bench.errors import Terminated

SIGTERM_EXIT = 128 + signal.SIGTERM  # 143: the shell's code for a process ended by SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT  # 130: ... by Ctrl-C
_OWNER = -1  # the pid of the process running the command: the only one that raises
_stopping = False  # a SIGINT or SIGTERM was turned into an exception in this command

Handler = Callable[[int, FrameType | None], object] | int | None


@contextmanager
def command(*, exits: bool = False) -> Iterator[None]:
    """Run one command with SIGINT and SIGTERM raised once (above); on any exception, end the MLflow
    runs the command left open (runs open before it are not its own), then propagate.

    The previous handlers are restored afterwards, except with ``exits`` (the CLI, whose process ends
    with the command) after a stop: SIGINT then stays ignored until the process has exited, so that
    the atexit handlers finish. In-process callers (tests, notebooks) get Ctrl-C back."""
    global _OWNER, _stopping
    on_main_thread = threading.current_thread() is threading.main_thread()  # elsewhere Python cannot
    _OWNER, _stopping = os.getpid(), False
    previous = _install() if on_main_thread else {}
    before = _open_runs()
    try:
        yield
    except BaseException as exc:
        _end_left_open(exc, before)
        raise
    finally:
        if exits and _stopping:
            previous.pop(signal.SIGINT, None)
        for signum, handler in previous.items():  # None: set outside Python, cannot be put back
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def stopping() -> bool:
    """Whether this command was stopped by SIGINT or SIGTERM (the process is ending)."""
    return _stopping


def _install() -> dict[int, Handler]:
    return {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}


def _stop(signum: int, _frame: FrameType | None) -> None:
    """The handler of SIGINT and SIGTERM in the command's process: raise once, then stop listening
    (SIGINT ignored, SIGTERM back to its default: a second SIGTERM ends the process at once). A
    process forked inside the command (a decode pool or data loader worker) inherits the handler but
    not the command: it dies of the signal as usual (raising there, inside a queue's lock, left the
    lock held and hung the parent's pool)."""
    global _stopping
    if os.getpid() != _OWNER:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _stopping = True
    if signum == signal.SIGTERM:
        raise Terminated(f"stopped by {signal.Signals(signum).name}")
    raise KeyboardInterrupt


def _open_runs() -> frozenset[str]:
    tracking = sys.modules.get("bench.tracking")
    return tracking.open_runs() if tracking is not None else frozenset()


def _end_left_open(exc: BaseException, before: frozenset[str]) -> None:
    tracking = sys.modules.get("bench.tracking")
    if tracking is not None:
        tracking.end_open_runs(tracking.ending(exc), repr(exc), keep=before)
