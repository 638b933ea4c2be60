#!/usr/bin/env bash
# Robustness of the shipped forms of the demo CNN next to its float32 original: the trained fixture
# (tests/fixtures/generated/fmnist_cnn_small.onnx) as onnxruntime's quantizers and float16 converter leave it
# (scripts/export_shipped_fixtures.py), plus a quantization-aware PGD-AT fine-tune of the QDQ model. Each is
# evaluated by `robustd eval --mode standalone` (every attack on every clean-correct image; white-box attacks
# through straight-through gradients on the quantized models, verdicts from onnxruntime on each file) on the
# first N Fashion-MNIST test images at L-inf eps 0.1, and a markdown table is printed. A measurement, not a test:
# ~10 min per model on 2 busy CPU cores at N=500.
# Usage: scripts/shipped_forms_robustness.sh [WORK_DIR] [N]   (defaults /tmp/robustd-shipped-forms, 500)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/robustd-shipped-forms}
n=${2:-500}
bin=target/release/robustd
py=.venv/bin/python
gen=tests/fixtures/generated
mkdir -p "$work"
models=(
  "float32 original:$gen/fmnist_cnn_small.onnx"
  "float16 (onnxconverter-common):$gen/shipped/fmnist_cnn_small_fp16.onnx"
  "int8 QDQ (quantize_static):$gen/shipped/fmnist_cnn_small_qdq.onnx"
  "uint8/int8 QOperator (quantize_static):$gen/shipped/fmnist_cnn_small_qoperator.onnx"
)
# The QDQ model fine-tuned quantization-aware (PGD-AT, 2 epochs on 4000 images), written back as QDQ.
if [ ! -f "$work/qat/fmnist_cnn_small_qdq.pgd-at.onnx" ]; then
  $bin finetune "$gen/shipped/fmnist_cnn_small_qdq.onnx" --method pgd-at --epochs 2 --train-samples 4000 \
    --attacks pgd --n 200 --out "$work/qat" >/dev/null
fi
models+=("int8 QDQ after QAT PGD-AT (robustd):$work/qat/fmnist_cnn_small_qdq.pgd-at.onnx")
for entry in "${models[@]}"; do
  label=${entry%%:*}
  model=${entry#*:}
  out="$work/eval-$(basename "$model" .onnx)"
  [ -f "$out/per_sample_before.npz" ] || $bin eval "$model" --mode standalone --n "$n" --eps 0.1 \
    --attacks pgd,apgd-ce,apgd-dlr,square --out "$out" >/dev/null
  echo "$label|$out/per_sample_before.npz"
done | $py -c '
import sys
import numpy as np
attacks = ["pgd", "apgd-ce", "apgd-dlr", "square"]
print("| model | clean | " + " | ".join(attacks) + " | worst case |")
print("|---" * (len(attacks) + 3) + "|")
for line in sys.stdin:
    label, path = line.strip().split("|")
    d = np.load(path)
    correct = d["clean_pred"] == d["label"]
    robust = [(correct & (d["attack_" + a] != 1)).mean() for a in attacks]
    worst = d["worst_case_robust"].mean()
    cells = [f"{100 * v:.1f}" for v in [correct.mean(), *robust, worst]]
    print(f"| {label} | " + " | ".join(cells) + " |")
'
