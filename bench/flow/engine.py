"""Which kernel computes G and C at a given step: :class:`FlowEngine`, and its status."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from bench.errors import BenchError, first_line
from bench.flow.compiled import CompiledFlow, CompiledKernels
from bench.flow.formulas import geometries
from bench.flow.fused import FusedFlow, Workspace

KERNELS = ("auto", "compiled", "eager")
COMPILE_AFTER_STEPS = 200  # "auto": a compile (10-30 s once per process and shapes) pays back in a few hundred steps


class FlowEngine:
    """Computes G and the second-difference C step after step, with one of two kernels.

    ``eager``: :class:`~bench.flow.fused.FusedFlow`, whose buffers live in ``workspace``.
    ``compiled``: the pure formulas, traced and compiled by inductor, specialised to the shapes of
    the first batch they see; a batch of other shapes (an epoch's short last batch) runs eagerly
    rather than recompiling. ``auto``: eager for the first ``compile_after`` steps, then compiled.
    A compile that fails (no C++ compiler, no triton) leaves the engine eager for good, with the
    reason in ``status`` and on stderr."""

    def __init__(self, mode: str = "eager") -> None:
        if mode not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {mode!r}")
        self.mode = mode
        self.compile_after = COMPILE_AFTER_STEPS
        self.workspace = Workspace()
        self.steps = 0
        self.status = "eager"
        self._compiled: CompiledKernels | None = None

    def terms(self, features: list[torch.Tensor], align: str, norm: str, curv: bool):
        """(G, C) of ``features``; C is 0 when ``curv`` is False."""
        self.steps += 1
        kernels = self._kernels_for(features, align, norm, curv)
        if kernels is not None:
            return CompiledFlow.apply(kernels, *features)
        return FusedFlow.apply(align, norm, curv, self.workspace, *features)

    def _kernels_for(self, features: list[torch.Tensor], align: str, norm: str, curv: bool):
        wanted = self.mode == "compiled" or (self.mode == "auto" and self.steps > self.compile_after)
        if not wanted or self.status.startswith("eager ("):
            return None
        signature = _signature(features, align, norm, curv)
        if self._compiled is None:
            try:
                self._compiled = CompiledKernels(features, signature, align, norm, curv)
            except Exception as exc:  # inductor needs a C++ compiler on CPU and triton on CUDA
                reason = getattr(exc, "inner_exception", None) or exc  # torch.compile wraps the backend's error
                self.status = f"eager (compile failed: {type(reason).__name__}: {first_line(reason)})"
                print(f"warning: ffr kernel {self.status}", file=sys.stderr)
                return None
            self.status = "compiled"
            self.workspace.clear()
        return self._compiled if self._compiled.signature == signature else None


def _signature(features: list[torch.Tensor], align: str, norm: str, curv: bool) -> tuple:
    layout = tuple((f.shape, f.stride(), f.dtype, f.device) for f in features)
    return layout, align, norm, curv


def fused_terms(
    features: list[torch.Tensor], align: str, norm: str, curv: bool, engine: FlowEngine | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, second-difference C) through the kernels; C is 0 when ``curv`` is False, both are 0 when
    no pair of features is compared (< 2 features, or no equal shapes with ``align="stage"``).
    ``engine``: eager without buffer reuse if None. The second difference uses that P is linear:
    x_{l+1} - 2 P(x_l) + P(P(x_{l-1})) = d_l - P(d_{l-1})."""
    if not any(g is not None for g in geometries(features, align)):
        zero = features[0].new_zeros(()) if features else torch.zeros(())
        return zero, zero
    if engine is None:
        return FusedFlow.apply(align, norm, curv, None, *features)
    return engine.terms(features, align, norm, curv)


@dataclass(frozen=True)
class KernelStatus:
    """What a method's :class:`FlowEngine` runs: ``kernel`` is ``"eager"``, ``"compiled"`` or
    ``"eager (compile failed: <reason>)"``; ``compile_after`` is the number of steps ``kernel="auto"``
    runs eagerly before compiling."""

    kernel: str
    compile_after: int


def kernel_status(method: object) -> KernelStatus:
    """The status of the :class:`FlowEngine` that ``method`` holds (in any attribute), for reports
    and benchmarks that must not know the plugin's attribute names."""
    engines = [value for value in vars(method).values() if isinstance(value, FlowEngine)]
    if not engines:
        raise BenchError(f"method {type(method).__name__} computes no feature flow with a bench.flow.FlowEngine")
    return KernelStatus(engines[0].status, engines[0].compile_after)
