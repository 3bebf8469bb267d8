"""``bench speed`` as text: the header, the estimate printed first, one block per section (printed
as each finishes), the line an interrupted run ends with, and the whole report. Accuracies do not
appear here; every figure is a time, a rate or a ratio, with its unit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.benchmarks.latency import format_latency
from bench.benchmarks.speed import SECTIONS, Section
from bench.measure import duration


def format_header(report: Mapping[str, Any]) -> str:
    r = report
    return f"bench speed on {r['device']} ({r['cpu_or_gpu']}, {r['threads']} threads, torch {r['torch']})"


def format_estimate(seconds: Mapping[str, float]) -> str:
    """The whole run's and each section's estimated time, said to be an estimate."""
    parts = ", ".join(f"({s.letter}) {duration(seconds[s.key])}" for s in SECTIONS if s.key in seconds)
    return (
        f"estimated time: about {duration(sum(seconds.values()))} ({parts}); an estimate from one timed training "
        "step per model and fixed per-image costs. Each section prints when it finishes; Ctrl-C keeps them."
    )


def format_section(section: Section, result: Mapping[str, Any]) -> str:
    """One section's block, as printed when it finishes."""
    formats = {"train_step": format_train_step, "data_pipeline": format_data_pipeline,
               "latency": format_latency, "ffr_overhead": format_ffr}  # fmt: skip
    return formats[section.key](result)


def format_timing(section: Section, took: float, estimated: float | None) -> str:
    guess = f", estimated {duration(estimated)}" if estimated is not None else ""
    return f"    ({section.letter}) took {duration(took)}{guess}"


def format_interrupted(report: Mapping[str, Any]) -> str:
    """The one line an interrupted run ends with: what was measured, what was not (no resume: a
    new run measures everything again)."""
    done = [f"({s.letter}) {s.title}" for s in SECTIONS if s.key in report]
    left = [f"({s.letter}) {s.title}" for s in SECTIONS if s.key not in report]
    kept = f"measured {', '.join(done)} (printed above)" if done else "before any section was measured"
    return f"interrupted: {kept}; not measured: {', '.join(left) or 'none'}"


def format_speed(report: Mapping[str, Any]) -> str:
    """The whole report: the header and every section it holds."""
    blocks = [format_section(s, report[s.key]) for s in SECTIONS if s.key in report]
    return "\n".join([format_header(report), *blocks])


def format_train_step(t: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            f"(a) training step, {t['model']}, batch {t['batch_size']}, median of {t['repeats']} alternating passes of "
            f"{t['steps']} steps:",
            f"    ours {t['ours_ms_per_step']:.1f} ms/step   bare PyTorch, same {t['memory_format']} format "
            f"{t['bare_ms_per_step']:.1f} ms/step   ratio ours/bare {t['ratio_ours_over_bare']:.3f} "
            f"(target <= {t['target_max_ratio']})",
            f"    bare PyTorch in plain NCHW {t['bare_nchw_ms_per_step']:.1f} ms/step   "
            f"ratio ours/bare-NCHW {t['ratio_ours_over_bare_nchw']:.3f}",
            f"    DataLoader loop (Torch-Pruning style, {t['dataloader_workers']} workers) "
            f"{t['dataloader_ms_per_step']:.1f} ms/step   images/s: ours {t['images_per_s']['ours']:,.0f}, "
            f"DataLoader {t['images_per_s']['dataloader']:,.0f}, speed-up {t['speedup_ours_over_dataloader']:.2f}x "
            f"(GPU target >= {t['target_min_speedup_over_dataloader_gpu']:.0f}x)",
        ]
    )


def format_data_pipeline(d: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            f"(b) data pipeline, {d['images']} images, batch {d['batch_size']}, DataLoader workers {d['workers']}:",
            f"    ours (batched uint8) {d['ours_images_per_s']:,.0f} img/s",
            f"    ImageFolder+DataLoader {d['imagefolder_dataloader_images_per_s']:,.0f} img/s   "
            f"ratio {d['ratio_ours_over_imagefolder']:.1f}x (target >= {d['target_min_ratio']:.0f}x)",
            f"    PIL-from-arrays+DataLoader (torchvision CIFAR10 style) "
            f"{d['pil_arrays_dataloader_images_per_s']:,.0f} img/s   ratio {d['ratio_ours_over_pil_arrays']:.1f}x",
        ]
    )


def format_ffr(f: Mapping[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in f["ffr_params"].items())
    return "\n".join(
        [
            f"(d) FFR overhead, {f['model']}, batch {f['batch_size']}, median of {f['repeats']} alternating passes of "
            f"{f['steps']} steps, {f['memory_format']}, ffr defaults ({params}):",
            f"    with FFR ({f['ffr_kernel']} kernel) {f['ffr_ms_per_step']:.1f} ms/step   plain "
            f"{f['plain_ms_per_step']:.1f} ms/step   ratio ffr/plain {f['ratio_ffr_over_plain']:.3f} "
            f"(target <= {f['target_max_ratio']})",
            f"    with FFR (eager kernel, its first {f['ffr_compile_after_steps']} steps) "
            f"{f['ffr_eager_ms_per_step']:.1f} ms/step   ratio {f['ratio_ffr_eager_over_plain']:.3f}",
        ]
    )
