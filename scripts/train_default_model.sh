#!/usr/bin/env bash
# Train the shipped default model (detector/default_model) on synthetic series only
# (training/synthetic.py), never on NAB, so the NAB evaluation stays a fair test.
# Fixed seed; about 10 minutes on a 2-core CPU. Usage: scripts/train_default_model.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-detector/default_model}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m stream.cli train \
  --synthetic 160 --synthetic-length 4000 \
  --epochs 8 --batch-size 256 --lr 2e-3 --stride 4 \
  --patience 3 --max-minutes 9 \
  --seed 20261123 --device cpu \
  --version "tsguard-default-2026.11.23" \
  --out "$OUT"
# The report and the plot stay next to the weights; they document how the model was made.
