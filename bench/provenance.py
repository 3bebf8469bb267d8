"""Where a result came from: code version, library versions and hardware, as flat string tags.

Principle 7 of the design: the measurement protocol is recorded with each result, so a table can be
trusted (and rebuilt) years later from the tracking store alone. Everything here is cheap (a few git
calls and metadata look-ups) and never raises: provenance that crashes a run is worse than
provenance that says "unknown".
"""

from __future__ import annotations

import functools
import getpass
import importlib.metadata
import platform
import socket
import subprocess
import sys
from pathlib import Path

from bench.schema import Source

UNKNOWN = "unknown"
NOT_INSTALLED = "not installed"

# Key suffix -> distribution names to try, in order (mlflow may be installed as mlflow-skinny only).
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "timm": ("timm",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "optuna": ("optuna",),
    "fvcore": ("fvcore",),
    "torch_pruning": ("torch-pruning",),
}

# The directory that holds the `bench` package; its git repository is the code being measured.
_PACKAGE_DIR = Path(__file__).resolve().parent


def environment() -> dict[str, str]:
    """Return the provenance of this process as ``env.*`` keys with string values (MLflow tags)."""
    env: dict[str, str] = {}
    env.update(_git_state(_PACKAGE_DIR))
    env["env.python"] = platform.python_version()
    for key, names in _DISTRIBUTIONS.items():
        env[f"env.{key}"] = package_version(*names)
    env.update(_torch_state())
    env["env.hostname"] = socket.gethostname()
    env["env.platform"] = platform.platform()
    return env


@functools.cache
def source_tags() -> dict[str, str]:
    """MLflow's standard source tags (``bench.schema.Source``), which fill the MLflow UI's Source and
    User columns: the git commit of the code that ran (left out outside git), the entry point,
    ``LOCAL`` and the user. Computed once per process (git is asked once)."""
    tags = {Source.NAME: _entry_point(), Source.TYPE: Source.LOCAL, Source.USER: _user()}
    sha = _git_state(_PACKAGE_DIR)["env.git_sha"]
    if sha != UNKNOWN:
        tags[Source.GIT_COMMIT] = sha
    return tags


def _entry_point() -> str:
    """``python -m bench run`` for the CLI; else the script that started Python (as MLflow's own
    default), or ``<console>`` for an interactive interpreter."""
    main = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(main).name == "__main__.py" and Path(main).parent.name == "bench":
        command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ""
        return f"python -m bench {command}".rstrip()
    return main or "<console>"


def _user() -> str:
    """The login name (``getpass.getuser``), else "unknown" (a container without a passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):
        return UNKNOWN


def package_version(*names: str) -> str:
    """Installed version of the first distribution found among ``names``, else "not installed"."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def _git(repo: Path, *args: str) -> str | None:
    """Run a read-only git command in ``repo``; None when git is missing or the command fails."""
    # safe.directory: a checkout owned by another user (containers, CI caches) must still report
    # its SHA instead of failing with git's "dubious ownership" refusal.
    cmd = ["git", "-c", f"safe.directory={repo}", "-C", str(repo), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_state(start: Path) -> dict[str, str]:
    """SHA of HEAD and whether the working tree differs from it ("true"/"false"/"unknown")."""
    root = _git(start, "rev-parse", "--show-toplevel")
    sha = _git(Path(root), "rev-parse", "--verify", "--quiet", "HEAD") if root else None
    if not root or not sha:  # outside git, git missing, or a repository without commits
        return {"env.git_sha": UNKNOWN, "env.git_dirty": UNKNOWN}
    # Untracked files count as dirty: an uncommitted method file changes what ran. Ignored files
    # (results/, .venv/) do not show up in porcelain output.
    status = _git(Path(root), "status", "--porcelain")
    dirty = UNKNOWN if status is None else str(bool(status)).lower()
    return {"env.git_sha": sha, "env.git_dirty": dirty}


def _torch_state() -> dict[str, str]:
    """CUDA/cuDNN versions, device name and thread count; torch is imported lazily."""
    try:
        import torch
    except ImportError:
        return {
            "env.cuda": NOT_INSTALLED,
            "env.cuda_available": "false",
            "env.cudnn": NOT_INSTALLED,
            "env.device": cpu_model(),
            "env.torch_threads": UNKNOWN,
        }
    # is_available() does not create a CUDA context; get_device_name() does, so only call it when
    # there is a GPU to name.
    available = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "env.torch": torch.__version__,  # the build tag too (+cu132, +cpu): it decides the kernels
        "env.cuda": torch.version.cuda or "none",
        "env.cuda_available": str(available).lower(),
        "env.cudnn": str(cudnn) if cudnn is not None else "none",
        "env.device": torch.cuda.get_device_name(0) if available else cpu_model(),
        "env.torch_threads": str(torch.get_num_threads()),
    }


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor(), else "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN
