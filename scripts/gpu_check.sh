#!/usr/bin/env bash
# GPU readiness check (bench/benchmarks/gpu_readiness.py): on one H100/H200, in at most 8 minutes,
# the gpu-marked tests, `bench speed --device cuda --model resnet56 --json` and one full-split
# resnet56 epoch, printed as one JSON document. Exits 2 at once, with one line, without CUDA.
#
#   BENCH_DATA_DIR=../shared/data scripts/gpu_check.sh [--out gpu.json]
#   scripts/gpu_check.sh --check                  # validate the set-up; runs nothing, needs no GPU
#   scripts/gpu_check.sh --device cpu --quick     # every step on the CPU at toy sizes
set -euo pipefail
cd "$(dirname "$0")/.."
exec uv run python -m bench.benchmarks.gpu_readiness "$@"
