"""Benchmarks of the harness itself, apart from the core: they measure, they are not the pipeline.

- :mod:`bench.benchmarks.speed`: ``bench speed``, sections (a) training step, (b) data pipeline,
  (d) FFR overhead, and (c) from :mod:`bench.benchmarks.latency`: dense vs pruned inference latency.
  Each section prints as it finishes; :mod:`bench.benchmarks.speed_eta` estimates the sections'
  time up front, :mod:`bench.benchmarks.speed_text` formats them, and section (b) lives in
  :mod:`bench.benchmarks.data_pipeline`.
- :mod:`bench.benchmarks.gpu_readiness`: ``scripts/gpu_check.sh``, the GPU checks in one JSON document
  (the ``gpu`` tests, ``bench speed --device cuda``, one full-split resnet56 epoch), under 8 minutes.
- :mod:`bench.benchmarks.sweep_scaling`: ``bench sweep-bench``, trials per minute with 1 and 2 workers.
- :mod:`bench.benchmarks.profile`: ``bench profile``, params, FLOPs and latency of one model.

The latency protocol itself (``measure.measure_latency(s)``) stays in :mod:`bench.measure`, where
every measured run uses it.
"""
