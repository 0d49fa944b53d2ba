#!/usr/bin/env bash
# The GPU check of the `gpu` profile in one command (planned for ~6 minutes on one H100-class GPU): GPU-only tests,
# `medst bench --profile gpu` over a batch sweep, and a short `gpu`-profile run on a phantom made here.
# Every result goes to $OUT (default benchmarks/results/gpu-check); see benchmarks/gpu_check.py for the stages.
#
#   OUT=results benchmarks/gpu_check.sh              # on a GPU machine, from a copy of the repository
#   OUT=/tmp/dry benchmarks/gpu_check.sh --dry-run   # the same stages on tiny shapes on a CPU
#
# PYTHON picks the interpreter (default python3); the repository needs no installing (PYTHONPATH is set here).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
