"""Benchmarks of the harness itself, apart from the core: they measure, they are not the pipeline.

- :mod:`bench.benchmarks.speed`: ``bench speed``, sections (a) training step, (b) data pipeline,
  (d) FFR overhead, and (c) from :mod:`bench.benchmarks.latency`: dense vs pruned inference latency.
- :mod:`bench.benchmarks.sweep_scaling`: ``bench sweep-bench``, trials per minute with 1 and 2 workers.
- :mod:`bench.benchmarks.profile`: ``bench profile``, params, FLOPs and latency of one model.

The latency protocol itself (``measure.measure_latency(s)``) stays in :mod:`bench.measure`, where
every measured run uses it.
"""
