"""Fused kernels for feature-flow terms (``ffr``): the length G and the second-difference
curvature C of a list of features x_0, x_1, ..., and their gradients, computed fast.

The definitions (methods/README.md, "ffr"): d_l = x_{l+1} - P(x_l), with P the parameter-free option-A
alignment (:func:`align_to`); G = sum_l mean_batch n(d_l), C = sum_l mean_batch n(d_l - P(d_{l-1}));
n is a per-sample norm (``l2``: L2 / sqrt(numel), ``l2sq``: squared L2 / numel, ``l1``: L1 / numel).
A plugin keeps its readable reference formulas; this package only makes them cheap.

Cost: G and C run as one autograd Function with a hand-written gradient, computed by one of two
engines (``kernel``). Eager (``fused``): in-place passes over buffers reused between steps; on
resnet56, batch 128, channels_last, 2 CPU threads, a training step grows by 16% (plain autograd
through the formulas: 64%). Compiled (``compiled``): inductor kernels (``torch.compile``) of the same
formulas, one fused pass per norm and per feature gradient, nothing stored but the features; the
step grows by about 7%. ``kernel="auto"`` switches from eager to compiled after
``COMPILE_AFTER_STEPS`` steps (``python -m bench speed``, section d, measures both).

Modules: ``formulas`` (P, the differences, the norms), ``fused`` (the eager kernel and its
workspace), ``compiled`` (the compiled kernel), ``engine`` (which kernel runs, and its status).
"""

from bench.flow.engine import COMPILE_AFTER_STEPS, KERNELS, FlowEngine, KernelStatus, fused_terms, kernel_status
from bench.flow.formulas import align_to

__all__ = ["COMPILE_AFTER_STEPS", "KERNELS", "FlowEngine", "KernelStatus", "align_to", "fused_terms", "kernel_status"]
