#!/usr/bin/env bash
# Run every speed benchmark on this machine and keep their JSON lines in benchmarks/results/<host>-<date>.jsonl.
# Copy the figures you want to keep into benchmarks/RESULTS.md together with the machine they came from.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
out=benchmarks/results/$(hostname)-$(date +%Y%m%d-%H%M).jsonl
mkdir -p benchmarks/results
run() { echo "+ $*" >&2; "$@" | tail -n 1 | tee -a "$out"; }
export HF_HUB_OFFLINE=1
run $PY benchmarks/synth_speed.py --patients 2000 --image-size 128
run $PY benchmarks/word_merge.py --reports 64 --tokens 112
run $PY benchmarks/move_cost.py
run $PY benchmarks/temporal_loss.py
run $PY benchmarks/loader_speed.py --patients 120
# One training step at the shapes of Method §9 (ViT-B/16 at 224 + a 6-layer BERT-base, 8 and 16 pairs, fp32).
run $PY -m medst.cli bench --profile gpu --json --batch-sizes 2,4 --steps 3 --device cpu \
    --set model.text.kind=tiny --set model.text.num_layers=6 --set model.vision.pretrained=false \
    --set train.precision=fp32 --set train.compile=false --set train.singles_per_batch=0
run $PY -m medst.cli bench --profile cpu --json --device cpu
echo "results in $out" >&2
